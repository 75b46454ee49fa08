"""test/container/pip_sources.py: this machine's pip sources as build arguments for
build-offline.sh (pip's precedence; local folders served over HTTP)."""

import os
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from conftest import ROOT

sys.path.insert(0, str(ROOT / "test" / "container"))
import pip_sources  # noqa: E402
from pip_sources import Server, build_args, pip_settings  # noqa: E402


def test_install_section_beats_global_later_files_win_and_the_environment_beats_both():
    listed = "\n".join(
        [
            "global.index-url='https://a/simple'",
            "install.index-url='https://b/simple'",
            "global.index-url='https://c/simple'",  # a later file, but [global]
            "global.find-links='/one'",
            "global.find-links='/two'",  # a later file, same section: it wins
            "global.cert='/etc/ssl/x.crt'",  # not a source
            "user.index-url='https://ignored'",
        ]
    )
    assert pip_settings(listed, {}) == {"index-url": "https://b/simple", "find-links": "/two"}
    env = {"PIP_INDEX_URL": "https://env/simple", "PIP_TRUSTED_HOST": "env-host", "PIP_FIND_LINKS": ""}
    assert pip_settings(listed, env) == {
        "index-url": "https://env/simple",
        "find-links": "/two",
        "trusted-host": "env-host",
    }


def test_local_sources_are_served_over_http_and_remote_ones_kept(tmp_path, capsys):
    index = tmp_path / "pypi" / "simple"
    index.mkdir(parents=True)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    serve = tmp_path / "serve"
    serve.mkdir()
    settings = {
        "index-url": "https://pypi.example/simple",
        "extra-index-url": f"file://{index} file://{index}/",  # the same folder twice: served once
        "find-links": f"{wheels} relative/wheels {tmp_path / 'missing'}",
        "trusted-host": "pypi.example",
    }
    server = Server(str(serve), 4711)
    args = build_args(settings, server)
    assert args == {
        "PIP_INDEX_URL": "https://pypi.example/simple",
        "PIP_EXTRA_INDEX_URL": "http://127.0.0.1:4711/src0/simple/ http://127.0.0.1:4711/src0/simple/",
        "PIP_FIND_LINKS": "http://127.0.0.1:4711/src1/",
        "PIP_TRUSTED_HOST": "pypi.example",
    }
    # an index links to ../../files/...: its parent is what is served
    assert os.readlink(serve / "src0") == str(index.parent) and os.readlink(serve / "src1") == str(wheels)
    err = capsys.readouterr().err
    assert "ignoring pip source relative/wheels (not a folder)" in err and "missing (not a folder)" in err


def test_no_reachable_source_gives_no_argument(tmp_path):
    assert build_args({"find-links": "/no/such/folder"}, Server(str(tmp_path), 1)) == {}


def test_the_script_prints_arguments_then_the_served_count(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (tmp_path / "serve").mkdir()
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": str(wheels)}
    env.pop("PIP_INDEX_URL", None), env.pop("PIP_EXTRA_INDEX_URL", None)
    script = ROOT / "test" / "container" / "pip_sources.py"
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "serve"), "38717"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "PIP_FIND_LINKS=http://127.0.0.1:38717/src0/" in lines and lines[-1] == "SERVE=1"


@given(st.text())
def test_any_config_listing_yields_only_known_keys(text):
    assert set(pip_settings(text, {})) <= set(pip_sources.KEYS)
