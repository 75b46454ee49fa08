"""The command line speaks as nnU-Net and TotalSegmentator users expect: --version, --device gpu,
fold subsets and --fast, -o for outputs, a help text and the default on every option, -v/-q
anywhere, and argument mistakes refused before torch is imported."""

import argparse
import json
import subprocess
import sys
from importlib.metadata import version

import pytest

from petseg.cli import build_parser, main
from petseg.errors import ConfigError
from petseg.settings import Settings, check_device

from conftest import ROOT, cohort_folder, predict_cli


def _run(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-c", code] if code else [sys.executable, "-m", "petseg", *args]
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_version_is_the_installed_distributions_and_loads_no_torch():
    done = _run(
        code="import sys\nfrom petseg.cli import main\ntry:\n main(['--version'])\nexcept SystemExit as e:\n"
        " print(e.code, 'torch' in sys.modules)"
    )
    assert done.stdout.split() == ["petseg", version("petseg"), "0", "False"]


@pytest.mark.parametrize(
    ("given", "meant"), [("gpu", "cuda"), ("GPU:1", "cuda:1"), ("cuda:0", "cuda:0"), (" CPU", "cpu")]
)
def test_gpu_reads_as_cuda_in_the_cli_and_the_library(given, meant):
    assert build_parser().parse_args(["predict", "-i", "x", "-o", "y", "--device", given]).device == meant
    assert check_device(given) == meant
    assert Settings(device=given).device == meant


@pytest.mark.parametrize("bad", ["tpu", "gpu:", "cuda:x", "mps", ""])
def test_a_bad_device_is_one_line_before_torch_is_imported(bad, tmp_path):
    code = (
        "import sys\nfrom petseg.cli import main\n"
        f"try:\n main(['predict', '-i', '.', '-o', {str(tmp_path / 'o')!r}, '--device', {bad!r}])\n"
        "except SystemExit as e:\n print(e.code, 'torch' in sys.modules)"
    )
    done = _run(code=code)
    assert done.stdout.split() == ["2", "False"]
    assert (
        len(done.stderr.strip().splitlines()) == 1 and "--device" in done.stderr and repr(bad or "empty") in done.stderr
    )
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="device"):
        Settings(device=bad or "x")


@pytest.mark.parametrize(
    "argv",
    [
        ["-q", "predict", "-i", "x", "-o", "y"],
        ["predict", "-q", "-i", "x", "-o", "y"],
        ["-v", "qc", "--pet", "p", "--mask", "m", "-o", "q.png"],
    ],
)
def test_verbosity_holds_before_or_after_the_command(argv):
    args, _ = build_parser().parse_known_args(argv)
    assert (args.quiet, args.verbose) == ("-q" in argv, "-v" in argv)


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_option_has_help_and_shows_its_default(command):
    parser = _subcommands()[command]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command} {action.option_strings or action.dest} has no help text"
        shown = formatter._get_help_string(action) % vars(action)
        if (
            action.option_strings
            and action.default is not None
            and action.default is not False
            and action.default != argparse.SUPPRESS
        ):
            assert "default" in shown, f"{command} {action.option_strings}: {shown!r} does not say its default"


def test_process_py_help_gives_the_real_time_budgets():
    from petseg import grand_challenge as gc

    done = subprocess.run([sys.executable, "process.py", "--help"], capture_output=True, text=True, cwd=ROOT)
    text = " ".join(done.stdout.split())
    assert done.returncode == 0
    for name, interface in gc.INTERFACES.items():
        assert f"{name} {interface.time_budget_s:g} s" in text
    assert "from model.json" not in text.split("--time-budget")[1].split("--")[0]


def _manifest(out):
    return json.loads((out / "petseg-run.json").read_text())


@pytest.mark.slow
def test_folds_runs_the_named_folds_and_fast_one_with_less_overlap(tiny_model_dir, tmp_path):
    src = cohort_folder(tmp_path / "in", 1)
    assert predict_cli(src, tmp_path / "sub", tiny_model_dir, "--folds", "1") == 0
    assert [f["fold"] for f in _manifest(tmp_path / "sub")["model"]["folds"]] == [1]
    assert predict_cli(src, tmp_path / "fast", tiny_model_dir, "--fast") == 0
    run = _manifest(tmp_path / "fast")
    assert [f["fold"] for f in run["model"]["folds"]] == [0]
    assert run["settings"]["overlap"] == 0.25 and run["settings"]["tta"] is False
    assert predict_cli(src, tmp_path / "fast1", tiny_model_dir, "--fast", "--folds", "1", "0") == 0
    assert [f["fold"] for f in _manifest(tmp_path / "fast1")["model"]["folds"]] == [1]


@pytest.mark.parametrize("folds", [["7"], ["0", "0"]])
def test_folds_the_model_lacks_are_one_line_naming_what_it_holds(folds, tiny_model_dir, tmp_path, capsys):
    src = cohort_folder(tmp_path / "in", 1)
    assert predict_cli(src, tmp_path / "out", tiny_model_dir, "--folds", *folds) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--folds" in err[0] and "[0, 1]" in err[0]
    assert not list((tmp_path / "out").glob("case*"))


def test_fast_with_tta_is_refused(tiny_model_dir, tmp_path, capsys):
    src = cohort_folder(tmp_path / "in", 1)
    assert predict_cli(src, tmp_path / "out", tiny_model_dir, "--fast", "--tta") == 1
    assert "--fast" in capsys.readouterr().err


def test_evaluate_takes_o_for_its_table(tmp_path):
    args = build_parser().parse_args(["evaluate", "--gt", "g", "--pred", "p", "-o", str(tmp_path / "r.csv")])
    assert args.out == tmp_path / "r.csv"
    assert main(["evaluate", "--gt", str(tmp_path / "none"), "--pred", str(tmp_path), "-o", "r.csv"]) == 1
