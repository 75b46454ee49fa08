"""House rules that a reviewer would otherwise check by hand."""

import shutil
import subprocess
import sys

import pytest
import tomllib

from conftest import ROOT

SOURCES = ["petseg", "process.py", "bench", "tests"]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff_is_clean(command):
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff not installed (pip install -e '.[test]')")
    result = subprocess.run([ruff, *command, *SOURCES], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_cli_and_package_import_no_heavy_dependencies():
    """`petseg --help` must not wait for torch: the package and the CLI import it lazily."""
    code = (
        "import sys, petseg, petseg.cli, petseg.frontend, petseg.layout, petseg.train; "
        "print(sorted(m for m in ('torch', 'monai', 'SimpleITK', 'cc3d', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_public_names_resolve_to_their_modules_objects():
    import importlib

    import petseg

    for name, module in petseg._PUBLIC.items():
        assert getattr(petseg, name) is getattr(importlib.import_module(module), name)
    assert set(petseg.__all__) == {*petseg._PUBLIC, "__version__"} == set(dir(petseg))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert petseg.__version__ == pyproject["project"]["version"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        petseg.nope  # noqa: B018


def test_every_subpackage_is_shipped():
    """A non-editable install (the container's) only gets the packages pyproject lists."""

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "petseg").rglob("__init__.py")}
    assert found == listed


def test_threads_follow_the_cgroup_quota_and_affinity(tmp_path, monkeypatch):
    from petseg.frontend import available_cpus, configure_threads

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    (tmp_path / "cpu.max").write_text("400000 100000\n")  # docker run --cpus 4
    assert available_cpus(cgroup=tmp_path) == 4
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(cgroup=tmp_path) == 16
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU still gets one thread
    assert available_cpus(cgroup=tmp_path) == 1
    env = {"OMP_NUM_THREADS": "3"}
    assert configure_threads(env) == 3 and env["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"].isdigit()
