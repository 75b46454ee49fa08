"""Runs that are stopped, fail part-way or meet a folder an earlier run wrote: outputs all or
none, every failure recorded as its case's (sequential and pipelined alike), no stale file
left to pass for the new run's."""

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

import petseg.backends
import petseg.io
import petseg.stages
from petseg.cohort import CASE_LOG, MANIFEST

from conftest import DIRECTIONS, ROOT, RUN_FILES, blob_study, cohort_folder, predict_cli, run_entries

sys.path.insert(0, str(ROOT))
import process  # noqa: E402


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and p.name not in RUN_FILES)


# --- a stop is a failure like any other: all or nothing ----------------------------------------


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_a_signal_between_the_two_renames_of_a_job_leaves_both_outputs(
    gc_input, tiny_model_dir, tmp_path, capsys, monkeypatch, signum, code
):
    """Grand Challenge and SLURM stop a job with SIGTERM: data-centric-model.json published and
    the mask still a temporary file must not survive it."""
    real = os.replace

    def replace_then_stop(src, dst):
        real(src, dst)
        if str(dst).endswith(".json"):
            signal.raise_signal(signum)

    monkeypatch.setattr(petseg.io.os, "replace", replace_then_stop)
    out = tmp_path / "out"
    args = ["--input", str(gc_input), "--output", str(out), "--model-dir", str(tiny_model_dir), "--device", "cpu"]
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    assert process.main(args) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    # the stop waits for the renames: the job's outputs are all there (never one without the other)
    assert files(out) == ["3f1c0a6e-case.mha", "data-centric-model.json"]
    assert not [p for p in out.rglob("*") if ".partial" in p.name]
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the caller's handlers are back


def not_log_lines(err: str) -> list[str]:
    """stderr without petseg's log records (warnings about the input, such as a CT without air)."""
    return [ln for ln in err.strip().splitlines() if ln.strip() and not ln[:8].replace(":", "").isdigit()]


def start(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "petseg", *args], env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def wait_for_first_case(run, out, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and run.poll() is None:
        if (out / CASE_LOG).is_file() and (out / CASE_LOG).read_text().count("\n") >= 1:
            return
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("signum, code, line", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_pipelined_run_stopped_by_a_signal_says_so_in_one_line(tiny_model_dir, tmp_path, signum, code, line):
    """Ctrl-C reaches the whole process group, workers included: one line, no worker tracebacks,
    no temporary file, and what was finished is recorded."""
    src = cohort_folder(tmp_path / "in", 6)
    out = tmp_path / "out"
    args = ["predict", "-i", str(src), "-o", str(out), "--model-dir", str(tiny_model_dir), "--device", "cpu"]
    run = start([*args, "--workers", "2", "-q"], tmp_path)
    try:
        wait_for_first_case(run, out)
        os.killpg(run.pid, signum)
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == code, err
    lines = not_log_lines(err)
    assert "Traceback" not in err and len(lines) == 1 and line in lines[0], err
    assert not [p for p in out.iterdir() if ".partial" in p.name]
    done = {e["case"] for e in run_entries(out) if e["status"] == "done"}
    masks = {p.name[: -len(".nii.gz")] for p in out.glob("case*.nii.gz")}
    assert done and masks == done  # every mask on disk is recorded; none is recorded without its mask


# --- one failure edge per case -------------------------------------------------------------------


@pytest.mark.parametrize(
    "error, message",
    [
        (RuntimeError("sitk::ERROR: Failed to allocate memory for image."), "out of memory"),
        (ValueError("a bug of ours"), "internal error: ValueError: a bug of ours"),
    ],
)
def test_any_failure_inside_a_case_is_that_cases_and_the_run_goes_on(
    tiny_model_dir, tmp_path, capsys, monkeypatch, error, message
):
    src = cohort_folder(tmp_path / "in", 3)
    real = petseg.backends.preprocess

    def failing(ct, pet, **kwargs):
        if "case01" in kwargs.get("pet_source", ""):
            raise error
        return real(ct, pet, **kwargs)

    monkeypatch.setattr(petseg.backends, "preprocess", failing)
    out = tmp_path / "out"
    assert predict_cli(src, out, tiny_model_dir, "--workers", "0") == 1
    assert files(out) == ["case00.nii.gz", "case02.nii.gz"]
    failed = [e for e in run_entries(out) if e["status"] == "failed"]
    assert [e["case"] for e in failed] == ["case01"] and message in failed[0]["message"]
    assert "Traceback" not in capsys.readouterr().err


def test_sequential_and_pipelined_runs_record_a_failure_alike(tiny_model_dir, tmp_path):
    src = cohort_folder(tmp_path / "in", 3)
    pet = sitk.ReadImage(str(src / "case01_0001.nii.gz"))
    sitk.WriteImage(pet * 5000.0, str(src / "case01_0001.nii.gz"))  # Bq/ml
    messages = {}
    for workers in ("0", "2"):
        out = tmp_path / f"out{workers}"
        assert predict_cli(src, out, tiny_model_dir, "--workers", workers) == 1
        messages[workers] = [(e["case"], e["message"]) for e in run_entries(out) if e["status"] == "failed"]
        assert files(out) == ["case00.nii.gz", "case02.nii.gz"]
    assert messages["0"] == messages["2"] and "looks like Bq/ml" in messages["0"][0][1]


def test_a_clicks_file_with_a_huge_integer_fails_its_case_only(click_model_dir, tmp_path, capsys):
    src = cohort_folder(tmp_path / "in", 2)
    clicks = tmp_path / "clicks"
    clicks.mkdir()
    (clicks / "case00_clicks.json").write_text('{"points": [{"point": [1, 2, 3], "name": "tumor"}]}')
    (clicks / "case01_clicks.json").write_text('{"points": [{"point": [1, 2, ' + "9" * 5000 + '], "name": "tumor"}]}')
    out = tmp_path / "out"
    assert predict_cli(src, out, click_model_dir, "--workers", "0", "--clicks", str(clicks)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "case01_clicks.json: points[0].point[2]" in err
    assert files(out) == ["case00.nii.gz"] and [e["status"] for e in run_entries(out)] == ["done", "failed"]


def test_the_container_refuses_a_clicks_file_with_a_huge_integer_in_one_line(
    gc_input, click_model_dir, tmp_path, capsys
):
    (gc_input / "lesion-clicks.json").write_text('{"points": [{"point": [' + "9" * 5000 + ', 1, 1], "name": "tumor"}]}')
    out = tmp_path / "out"
    args = ["--input", str(gc_input), "--output", str(out), "--model-dir", str(click_model_dir), "--device", "cpu"]
    assert process.main([*args, "--interface", "autopet4"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a number too large" in err[0] and files(out) == []


# --- resume: changed inputs redo their case, stale outputs go -----------------------------------


def test_a_replaced_input_redoes_its_case_on_resume(tiny_model_dir, tmp_path):
    src = cohort_folder(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert predict_cli(src, out, tiny_model_dir, "--workers", "0") == 0
    before = (out / "case01.nii.gz").read_bytes()
    other = blob_study(size=(30, 26, 20), direction=DIRECTIONS["flipped"], radius=10.0)
    for channel, image in zip(("0000", "0001"), other):
        sitk.WriteImage(image, str(src / f"case01_{channel}.nii.gz"))
    assert predict_cli(src, out, tiny_model_dir, "--workers", "0") == 0
    second = [(e["case"], e["status"]) for e in run_entries(out)[2:]]
    assert second == [("case00", "skipped"), ("case01", "done")]
    mask = sitk.ReadImage(str(out / "case01.nii.gz"))
    assert mask.GetSize() == (30, 26, 20) and (out / "case01.nii.gz").read_bytes() != before


def test_a_rerun_that_asks_for_less_removes_the_earlier_runs_maps(tiny_model_dir, tmp_path, caplog):
    src = cohort_folder(tmp_path / "in", 1)
    out = tmp_path / "out"
    assert predict_cli(src, out, tiny_model_dir, "--workers", "0", "--save-probabilities", "--report") == 0
    assert files(out) == ["case00.nii.gz", "case00_lesions.csv", "case00_lesions.json", "case00_probability.nii.gz"]
    with caplog.at_level("INFO"):
        assert predict_cli(src, out, tiny_model_dir, "--workers", "0", "--threshold", "0.3") == 0
    assert files(out) == ["case00.nii.gz"]
    assert any("removed 4 output(s) of an earlier run" in r.getMessage() for r in caplog.records)
    header = json.loads((out / MANIFEST).read_text())
    assert header["settings"]["threshold"] == 0.3 and header["earlier_runs"][0]["settings"]["threshold"] == 0.5


def test_a_failing_rerun_leaves_no_earlier_mask_behind(tiny_model_dir, tmp_path):
    src = cohort_folder(tmp_path / "in", 1)
    out = tmp_path / "out"
    assert predict_cli(src, out, tiny_model_dir, "--workers", "0") == 0
    pet = sitk.ReadImage(str(src / "case00_0001.nii.gz"))
    values = sitk.GetArrayFromImage(pet)
    values[0, 0, 0] = np.nan
    bad = sitk.GetImageFromArray(values)
    bad.CopyInformation(pet)
    sitk.WriteImage(bad, str(src / "case00_0001.nii.gz"))
    assert predict_cli(src, out, tiny_model_dir, "--workers", "0") == 1
    assert files(out) == [] and run_entries(out)[-1]["status"] == "failed"


# --- third hostile round: what a crafted or colliding folder must not do ------------------------


def test_a_crafted_manifest_line_cannot_make_predict_delete_other_files(tiny_model_dir, tmp_path):
    src = cohort_folder(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert predict_cli(src, out, tiny_model_dir, "--workers", "0") == 0
    (out / "notes.txt").write_text("mine")
    victims = ["case01.nii.gz", "petseg-run.jsonl", "petseg-run.json", "notes.txt", "../in/case00_0000.nii.gz"]
    with open(out / CASE_LOG, "a") as fh:
        fh.write(json.dumps({"case": "case00", "status": "failed", "outputs": victims}) + "\n")
    assert predict_cli(src, out, tiny_model_dir, "--workers", "0") == 0  # case00 redone (its last line failed)
    assert (out / "case01.nii.gz").is_file() and (out / "notes.txt").read_text() == "mine"
    assert (src / "case00_0000.nii.gz").is_file() and len(run_entries(out)) == 2 + 1 + 2  # the history is kept


def test_two_files_for_one_case_are_refused_not_overwritten(tiny_model_dir, tmp_path, capsys):
    src = cohort_folder(tmp_path / "in", 1)
    for channel in ("0000", "0001"):
        image = sitk.ReadImage(str(src / f"case00_{channel}.nii.gz"))
        sitk.WriteImage(image, str(src / f"case00_{channel}.mha"))
    assert predict_cli(src, tmp_path / "out", tiny_model_dir, "--workers", "0") == 1
    assert "case case00 has two CT files (case00_0000.mha, case00_0000.nii.gz): keep one" in capsys.readouterr().err
    assert files(tmp_path / "out") == []


def test_a_case_whose_mask_would_be_anothers_map_is_refused(tiny_model_dir, tmp_path, capsys):
    src = cohort_folder(tmp_path / "in", 1)
    for channel in ("0000", "0001"):
        (src / f"case00_probability_{channel}.nii.gz").write_bytes((src / f"case00_{channel}.nii.gz").read_bytes())
    assert predict_cli(src, tmp_path / "out", tiny_model_dir, "--save-probabilities") == 1
    err = capsys.readouterr().err
    assert "case00_probability.nii.gz: written by two cases (case00 and case00_probability)" in err
    assert files(tmp_path / "out") == []


def test_the_container_checks_its_output_folder_before_the_folds_load(gc_input, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "images" / "automated-petct-lesion-segmentation").mkdir(parents=True)
    (out / "images" / "automated-petct-lesion-segmentation" / "old-uuid.mha").write_bytes(b"old")
    args = ["--input", str(gc_input), "--output", str(out), "--model-dir", str(tiny_model_dir), "--device", "cpu"]
    assert process.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds old-uuid.mha: a job writes exactly one mask here" in err[0]
    assert "predictor:" not in capsys.readouterr().out  # refused before any fold loaded
