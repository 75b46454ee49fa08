"""Cohort prediction: pipeline, shards, torchrun, resume, manifest, bounded memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.cohort import CASE_LOG, MANIFEST, Job, Manifest, Shard, rank_device, run_cohort
from petseg.errors import ConfigError
from petseg.stages import EnsembleMaps

from conftest import SMALL, cohort_folder, predict_cli, run_entries

ROOT = Path(__file__).resolve().parents[1]


def masks(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("case*.nii.gz") if "_probability" not in p.name)


def test_pipelined_outputs_equal_sequential_outputs(tiny_model_dir, tmp_path):
    src = cohort_folder(tmp_path / "in", 4)
    assert predict_cli(src, tmp_path / "seq", tiny_model_dir, "--workers", "0", "--save-probabilities", "--report") == 0
    assert (
        predict_cli(src, tmp_path / "pipe", tiny_model_dir, "--workers", "2", "--save-probabilities", "--report") == 0
    )
    names = sorted(p.name for p in (tmp_path / "seq").iterdir() if not p.name.startswith("petseg-run"))
    assert names == sorted(p.name for p in (tmp_path / "pipe").iterdir() if not p.name.startswith("petseg-run"))
    assert len(names) == 4 * 4  # mask, probability, lesions .json and .csv per case
    for name in names:
        if name.endswith(".nii.gz"):
            a, b = (sitk.ReadImage(str(tmp_path / run / name)) for run in ("seq", "pipe"))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
            assert a.GetOrigin() == b.GetOrigin() and a.GetDirection() == b.GetDirection()
        else:
            assert (tmp_path / "seq" / name).read_bytes() == (tmp_path / "pipe" / name).read_bytes()


def test_two_shards_share_a_folder_and_write_every_mask_exactly_once(tiny_model_dir, tmp_path):
    src = cohort_folder(tmp_path / "in", 5)
    out = tmp_path / "out"
    for part in ("0", "1"):
        assert predict_cli(src, out, tiny_model_dir, "--num-parts", "2", "--part-id", part, "--workers", "1") == 0
    assert masks(out) == [f"case{i:02d}.nii.gz" for i in range(5)]
    done = [e for e in run_entries(out) if e["status"] == "done"]
    assert sorted(e["case"] for e in done) == [f"case{i:02d}" for i in range(5)]  # each exactly once
    parts = {e["part"]: {x["case"] for x in done if x["part"] == e["part"]} for e in done}
    assert set(parts) == {"0/2", "1/2"} and not parts["0/2"] & parts["1/2"]


@pytest.mark.slow
def test_torchrun_gives_each_process_its_shard(tiny_model_dir, tmp_path):
    src = cohort_folder(tmp_path / "in", 3)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "petseg"]
    command += ["predict", "-i", str(src), "-o", str(out), "--model-dir", str(tiny_model_dir), "--workers", "0", "-q"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert masks(out) == ["case00.nii.gz", "case01.nii.gz", "case02.nii.gz"]
    done = [e for e in run_entries(out) if e["status"] == "done"]
    assert sorted(e["case"] for e in done) == ["case00", "case01", "case02"]
    assert {e["part"] for e in done} == {"0/2", "1/2"}


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie left for a parent that does not reap)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.slow
def test_a_killed_run_started_again_does_only_the_rest(tiny_model_dir, tmp_path):
    src = cohort_folder(tmp_path / "in", 8)
    out = tmp_path / "out"
    args = ["predict", "-i", str(src), "-o", str(out), "--model-dir", str(tiny_model_dir), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.Popen([sys.executable, "-m", "petseg", *args, "--workers", "1", "-q"], env=env)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and run.poll() is None:
            if (out / CASE_LOG).is_file() and any(e["status"] == "done" for e in run_entries(out)):
                break
            time.sleep(0.01)
        workers = children(run.pid)
        os.kill(run.pid, signal.SIGKILL)
    finally:
        run.wait()
    deadline = time.monotonic() + 10
    while any(map(alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert workers and not any(map(alive, workers)), "orphaned workers"
    first = {e["case"] for e in run_entries(out) if e["status"] == "done"}
    assert 1 <= len(first) < 8, "the run was not stopped part-way"
    mtimes = {name: (out / f"{name}.nii.gz").stat().st_mtime_ns for name in first}
    assert predict_cli(src, out, tiny_model_dir, "--workers", "1") == 0
    assert masks(out) == [f"case{i:02d}.nii.gz" for i in range(8)]
    assert {name: (out / f"{name}.nii.gz").stat().st_mtime_ns for name in first} == mtimes
    second = run_entries(out)[len(first) :]
    assert {e["case"] for e in second if e["status"] == "skipped"} == first
    assert {e["case"] for e in second if e["status"] == "done"} == {f"case{i:02d}" for i in range(8)} - first
    assert not list(out.glob("*.partial"))


def test_other_settings_or_overwrite_redo_a_done_case(tiny_model_dir, tmp_path):
    src = cohort_folder(tmp_path / "in", 1)
    out = tmp_path / "out"
    assert predict_cli(src, out, tiny_model_dir, "--workers", "0") == 0
    assert predict_cli(src, out, tiny_model_dir, "--workers", "0") == 0
    assert predict_cli(src, out, tiny_model_dir, "--workers", "0", "--threshold", "0.4") == 0
    assert predict_cli(src, out, tiny_model_dir, "--workers", "0", "--threshold", "0.4", "--save-probabilities") == 0
    assert predict_cli(src, out, tiny_model_dir, "--workers", "0", "--threshold", "0.4", "--overwrite") == 0
    assert [e["status"] for e in run_entries(out)] == ["done", "skipped", "done", "done", "done"]
    header = json.loads((out / MANIFEST).read_text())
    model = json.loads((tiny_model_dir / "model.json").read_text())
    assert [f["sha256"] for f in header["model"]["folds"]] == [f["sha256"] for f in model["folds"]]
    assert header["settings"]["threshold"] == 0.4 and header["petseg_version"]
    assert set(run_entries(out)[0]["seconds"]) == {"read", "preprocess", "network", "restore", "write"}


def test_a_case_failing_in_a_worker_does_not_stop_the_others(tiny_model_dir, tmp_path, capsys):
    src = cohort_folder(tmp_path / "in", 3)
    bad = src / "case01_0001.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated PET
    out = tmp_path / "out"
    assert predict_cli(src, out, tiny_model_dir, "--workers", "2") == 1
    assert masks(out) == ["case00.nii.gz", "case02.nii.gz"]
    failed = [e for e in run_entries(out) if e["status"] == "failed"]
    assert [e["case"] for e in failed] == ["case01"] and "case01_0001.nii.gz" in failed[0]["message"]
    err = capsys.readouterr().err
    assert "case case01 failed" in err and "Traceback" not in err


class SlowNetwork:
    """A stand-in network stage that takes ``first`` seconds over its first study (the loaders
    run ahead meanwhile, however loaded the machine: a small study loads in well under that)
    and ``seconds`` over each later one."""

    def __init__(self, seconds: float, first: float | None = None) -> None:
        self.settings = SMALL
        self.seconds, self.first = seconds, first

    def run_network(self, image, record, *, start=None) -> tuple[EnsembleMaps, float]:
        seconds, self.first = (self.seconds if self.first is None else self.first), None
        time.sleep(seconds)
        return EnsembleMaps((image[1] > 2.5).astype(np.float32), None, None), seconds


def cohort_jobs(tmp_path: Path, n: int) -> list[Job]:
    """``cohort`` studies as jobs writing into tmp_path/out."""
    src = cohort_folder(tmp_path / "in", n)
    (tmp_path / "out").mkdir()
    paths = [(src / f"case{i:02d}_0000.nii.gz", src / f"case{i:02d}_0001.nii.gz") for i in range(n)]
    return [Job(name=ct.name[:6], ct=ct, pet=pet, mask=tmp_path / "out" / f"{ct.name[:6]}.nii.gz") for ct, pet in paths]


@pytest.mark.parametrize("workers", [1, 2])
def test_studies_in_flight_stay_bounded_with_a_slow_consumer(tmp_path, workers):
    jobs = cohort_jobs(tmp_path, 7)
    summary = run_cohort(jobs, predictor=SlowNetwork(0.1, first=4.0), workers=workers, progress=False)
    assert len(summary.done) == 7 and not summary.failed
    # unbounded, all 7 would be loaded while the first is in the network
    assert 2 <= summary.max_in_flight <= 2 * workers + 1


def test_shards_are_disjoint_cover_everything_and_ignore_listing_order():
    names = [f"c{i}" for i in range(11)]
    for parts in (1, 2, 3, 5, 12):
        picked = [Shard(parts, k).select(names, key=str) for k in range(parts)]
        assert sorted(sum(picked, [])) == sorted(names)
        assert picked == [Shard(parts, k).select(reversed(names), key=str) for k in range(parts)]
    with pytest.raises(ConfigError, match="part-id"):
        Shard(2, 2)
    assert Shard.from_environment({"RANK": "1", "WORLD_SIZE": "4"}) == Shard(4, 1)
    assert Shard.from_environment({}) is None
    assert rank_device("cpu", {"LOCAL_RANK": "1"}) == "cpu"


def test_manifest_lines_from_many_writers_stay_whole(tmp_path):
    manifest = Manifest(tmp_path, model={}, settings=SMALL, shard=Shard(), device="cpu")
    script = (
        "import sys; from petseg.cohort import Manifest, Shard; from petseg.settings import Settings\n"
        "m = Manifest(sys.argv[1], model={}, settings=Settings(roi_size=(32, 32, 32), sw_batch_size=2, device='cpu'),"
        " shard=Shard(), device='cpu')\n"
        "for i in range(200): m.append({'case': f'{sys.argv[2]}-{i}', 'status': 'done', 'pad': 'x' * 3000})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(w)], env=env) for w in range(3)]
    assert all(r.wait(timeout=120) == 0 for r in runs)
    lines = run_entries(tmp_path)
    assert len(lines) == 600 and len({e["case"] for e in lines}) == 600
    assert set(manifest.completed()) == {e["case"] for e in lines}


@pytest.mark.slow
def test_a_killed_worker_neither_hangs_the_run_nor_loses_the_other_cases(tmp_path):
    import multiprocessing
    import threading

    from petseg.cohort.pipeline import WORKER_DIED

    jobs = cohort_jobs(tmp_path, 5)

    def kill_a_worker() -> None:
        deadline = time.monotonic() + 60
        while not multiprocessing.active_children() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(1.0)  # some cases are under way
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    summary = run_cohort(jobs, predictor=SlowNetwork(0.5), workers=1, progress=False)
    killer.join()
    assert sorted(summary.done + list(summary.failed)) == [job.name for job in jobs]  # every case accounted for
    assert set(summary.failed.values()) <= {WORKER_DIED}
    # at most 2 * workers + 1 were in flight when it died: the new pool did the rest
    assert len(summary.done) >= len(jobs) - 3
