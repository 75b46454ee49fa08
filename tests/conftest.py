"""Shared fixtures: tiny synthetic images with unequal spacing, oracle and tiny networks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from petseg.compare import dice as compare_dice
from petseg.model_write import write_model_folder
from petseg.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "reference"
RUN_FILES = {"petseg-run.json", "petseg-run.jsonl"}  # predict's run manifest in every output folder

TINY_NETWORK = {
    "spatial_dims": 3,
    "in_channels": 2,
    "out_channels": 2,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 1,
    "norm": "batch",
    "act": "PRELU",
}
SMALL = Settings(roi_size=(32, 32, 32), sw_batch_size=2, device="cpu")


def rotation(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


# Directions every geometry-sensitive test runs on: identity, flipped, permuted, oblique.
DIRECTIONS = {
    "identity": np.eye(3),
    "flipped": np.diag([-1.0, 1.0, -1.0]),
    "permuted": np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, -1]]),
    "oblique": rotation(2, 0.35) @ rotation(0, 0.15) @ np.diag([1.0, -1.0, 1.0]),
}


def make_image(array_xyz: np.ndarray, *, spacing, origin, direction) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array_xyz).transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(float(d) for d in np.asarray(direction).reshape(-1)))
    return image


def physical_points(image: sitk.Image) -> np.ndarray:
    """(X, Y, Z, 3) physical coordinates of every voxel centre."""
    size = image.GetSize()
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), axis=-1).astype(float)
    rot = np.asarray(image.GetDirection()).reshape(3, 3)
    return (idx * np.asarray(image.GetSpacing())) @ rot.T + np.asarray(image.GetOrigin())


def blob_study(
    *,
    size=(40, 36, 30),
    spacing=(3.1, 2.4, 4.3),
    origin=(-37.5, 120.0, -400.2),
    direction=np.eye(3),
    radius=16.0,
    ct_grid: str = "other",
):
    """PET (SUV 1, spheres of SUV 6) and a body CT; the CT on its own grid unless ct_grid='same'."""
    template = make_image(np.zeros(size, np.float32), spacing=spacing, origin=origin, direction=direction)
    pts = physical_points(template)
    centre = pts.reshape(-1, 3).mean(axis=0)
    offsets = np.array([[0.0, 0, 0], [radius * 1.6, radius * 1.3, 0.0]])
    pet = np.ones(size, np.float32)
    for off in offsets:
        pet[np.linalg.norm(pts - (centre + off), axis=-1) <= radius] = 6.0
    pet_image = make_image(pet, spacing=spacing, origin=origin, direction=direction)
    if ct_grid == "same":
        ct_image = make_image(np.full(size, 40.0, np.float32), spacing=spacing, origin=origin, direction=direction)
    else:  # finer, axis-aligned, offset grid that covers the PET
        ct_sp = np.array([1.7, 1.9, 2.5])
        half = np.abs(np.asarray(direction)) @ (np.asarray(size) * np.asarray(spacing)) / 2 + 10
        ct_size = np.ceil(2 * half / ct_sp).astype(int)
        ct_image = make_image(
            np.full(tuple(ct_size), 40.0, np.float32), spacing=ct_sp, origin=centre - half, direction=np.eye(3)
        )
    return ct_image, pet_image


class Oracle(torch.nn.Module):
    """Logits (2.5 - PET, PET - 2.5): the 'true' segmentation is PET > 2.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pet = x[:, 1:2]
        return torch.cat([2.5 - pet, pet - 2.5], dim=1)


def cohort_folder(root: Path, n: int) -> Path:
    """n small studies on anisotropic, oblique grids with non-zero origins, nnU-Net named."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        ct, pet = blob_study(size=(24 + i, 22, 18), origin=(-37.5 + i, 120.0, -400.2), direction=DIRECTIONS["oblique"])
        sitk.WriteImage(ct, str(root / f"case{i:02d}_0000.nii.gz"))
        sitk.WriteImage(pet, str(root / f"case{i:02d}_0001.nii.gz"))
    return root


def training_cohort(root: Path, n: int, seed: int) -> Path:
    """n FDG and n PSMA phantoms (seeds seed, seed + 1) on one anisotropic grid: a tiny training set."""
    from petseg.phantom import make_cohort

    for tracer, s in (("fdg", seed), ("psma", seed + 1)):
        make_cohort(root, n=n, seed=s, tracer=tracer, shape=(24, 20, 40), spacing=(8.0, 9.0, 10.0))
    return root


def predict_cli(src, out, model, *extra) -> int:
    """``petseg predict`` on the CPU, through the CLI's entry point."""
    from petseg.cli import main

    return main(["predict", "-i", str(src), "-o", str(out), "--model-dir", str(model), "--device", "cpu", *extra])


def run_entries(out: Path) -> list[dict]:
    """The lines of a predict run's case log."""
    from petseg.cohort import CASE_LOG

    return [json.loads(line) for line in (out / CASE_LOG).read_text().splitlines() if line.strip()]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return compare_dice(np.asarray(a) > 0, np.asarray(b) > 0)


def random_model_folder(out: Path, *, in_channels: int, seed: int, settings: Settings, description: str) -> Path:
    """A two-fold model folder of tiny random UNets (fold K seeded ``seed + K``)."""
    from petseg.model import build_network

    network = {**TINY_NETWORK, "in_channels": in_channels}
    states = {}
    for fold in range(2):
        torch.manual_seed(seed + fold)
        states[fold] = build_network(network).state_dict()
    write_model_folder(out, state_dicts=states, network=network, settings=settings, description=description)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A two-fold CT/PET model folder with a tiny random UNet and 32^3 windows."""
    return random_model_folder(
        tmp_path_factory.mktemp("tiny_model"), in_channels=2, seed=0, settings=SMALL, description="tiny test model"
    )


@pytest.fixture(scope="session")
def pet_model_dir(tmp_path_factory) -> Path:
    """A two-fold PET-only model folder: a tiny random UNet with 1 input channel."""
    from petseg.settings import PET_ONLY

    settings = SMALL.with_overrides(modalities=PET_ONLY)
    out = tmp_path_factory.mktemp("pet_model")
    return random_model_folder(out, in_channels=1, seed=20, settings=settings, description="tiny PET-only model")


@pytest.fixture(scope="session")
def click_model_dir(tmp_path_factory) -> Path:
    """A two-fold click-aware model folder: a tiny random UNet with 4 input channels."""
    settings = SMALL.with_overrides(click_sigma_mm=10.0)
    out = tmp_path_factory.mktemp("click_model")
    return random_model_folder(out, in_channels=4, seed=10, settings=settings, description="tiny click model")


@pytest.fixture()
def gc_input(tmp_path) -> Path:
    """A Grand Challenge input folder with a small phantom study."""
    from petseg.phantom import make_study

    study = make_study(tracer="fdg", seed=3, shape=(24, 20, 40), spacing=(8.0, 9.0, 10.0), n_lesions=2)
    root = tmp_path / "input"
    for role, image in (("ct", study.ct), ("pet", study.pet)):
        (root / "images" / role).mkdir(parents=True)
        sitk.WriteImage(image, str(root / "images" / role / "3f1c0a6e-case.mha"))
    return root
