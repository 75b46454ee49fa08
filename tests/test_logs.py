"""What a run says: one routine line per case on stdout (details at -v), warnings only when
they apply, a throughput only from two finished studies, and no progress bar in a file."""

import subprocess
import sys

import pytest

from conftest import ROOT, predict_cli, training_cohort


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.slow
def test_predict_says_one_line_per_case_and_details_at_v(tiny_model_dir, tmp_path, capsys):
    src = training_cohort(tmp_path / "in", n=1, seed=5) / "imagesTr"  # an FDG and a PSMA phantom
    assert predict_cli(src, tmp_path / "out", tiny_model_dir) == 0
    out, err = capsys.readouterr()
    assert err == ""  # auto on a machine without CUDA is no warning
    lines = _lines(out)
    assert len(lines) == 4, out  # the predictor, two cases, the closing line
    for line, tracer in zip(lines[1:3], ("fdg_", "psma_")):
        assert f" {tracer}" in line and " lesion" in line and " s -> " in line
    assert "studies/hour" in _lines(out)[-1]
    assert predict_cli(src, tmp_path / "v", tiny_model_dir, "-v") == 0
    verbose, verbose_err = capsys.readouterr()
    assert all(stage in verbose for stage in ("read", "preprocess", "network", "restore", "write", "network grid"))
    assert "\r" not in verbose + verbose_err and "it/s" not in verbose_err  # -v: no window bar either, off a terminal


@pytest.mark.slow
def test_no_throughput_from_one_case_or_none(tiny_model_dir, tmp_path, capsys):
    src = training_cohort(tmp_path / "in", n=1, seed=5) / "imagesTr"
    (src / next(src.glob("psma*_0000.nii.gz")).name).unlink()
    (src / next(src.glob("psma*_0001.nii.gz")).name).unlink()
    assert predict_cli(src, tmp_path / "out", tiny_model_dir) == 0
    assert "studies/hour" not in capsys.readouterr().out
    assert predict_cli(src, tmp_path / "out", tiny_model_dir) == 0  # all skipped
    closing = _lines(capsys.readouterr().out)[-1]
    assert "0 done, 1 skipped" in closing and "studies/hour" not in closing


def test_an_explicit_cuda_request_without_cuda_is_a_warning(tiny_model_dir, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    src = training_cohort(tmp_path / "in", n=1, seed=5) / "imagesTr"
    assert predict_cli(src, tmp_path / "out", tiny_model_dir, "--device", "gpu") == 0
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "CUDA is not available" in err[0] and "--device cuda" in err[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["phantom", "-o", "{t}/ph", "-n", "2", "--shape", "24", "20", "40", "--spacing", "8", "9", "10"],
        ["evaluate", "--gt", "{t}/ph/labelsTr", "--pred", "{t}/ph/labelsTr"],
    ],
)
def test_no_progress_bar_when_the_stream_is_a_file(argv, tmp_path):
    if argv[0] == "evaluate":
        test_no_progress_bar_when_the_stream_is_a_file(
            ["phantom", "-o", "{t}/ph", "-n", "2", "--shape", "24", "20", "40", "--spacing", "8", "9", "10"], tmp_path
        )
    with open(tmp_path / "err.txt", "w") as err, open(tmp_path / "out.txt", "w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "petseg", *(a.format(t=tmp_path) for a in argv)], stdout=out, stderr=err, cwd=ROOT
        )
    assert done.returncode == 0
    assert (tmp_path / "err.txt").read_text() == ""
    assert "\r" not in (tmp_path / "out.txt").read_text()
