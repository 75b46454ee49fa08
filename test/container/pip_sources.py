"""This machine's pip index settings as Docker build arguments (used by build-offline.sh).

Reads ``pip config list`` (files in pip's load order, later wins; ``[install]`` beats
``[global]``) and then pip's own ``PIP_*`` environment variables, which override the files.
Local folders and ``file://`` indexes are not reachable from inside ``docker build``: each is
linked into a folder that build-offline.sh serves over HTTP on 127.0.0.1 while it builds.

Output, one per line: ``PIP_INDEX_URL=...`` etc., then ``SERVE=<number of served folders>``.

    python3 pip_sources.py SERVE_DIR PORT
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

KEYS = ("index-url", "extra-index-url", "find-links", "trusted-host")
URL_KEYS = KEYS[:3]


def env_name(key: str) -> str:
    return "PIP_" + key.upper().replace("-", "_")


def pip_settings(config_list: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The effective value of each of KEYS from ``pip config list`` output and the environment."""
    found: dict[str, tuple[bool, str]] = {}
    for line in config_list.splitlines():
        name, _, value = line.partition("=")
        section, _, key = name.partition(".")
        if section in ("global", "install") and key in KEYS:
            install = section == "install"
            if key not in found or install >= found[key][0]:
                found[key] = (install, value.strip("'\""))
    settings = {key: value for key, (_, value) in found.items()}
    for key in KEYS:
        if environ.get(env_name(key)):
            settings[key] = environ[env_name(key)]
    return settings


class Server:
    """Folders linked under ``serve_dir``, reachable at ``http://127.0.0.1:PORT/srcN/``."""

    def __init__(self, serve_dir: str, port: int | str) -> None:
        self.serve_dir, self.port = serve_dir, port
        self.served: dict[str, str] = {}

    def url_for(self, item: str) -> str | None:
        if item.startswith(("http://", "https://")):
            return item
        is_url = item.startswith("file://")
        path = item[len("file://") :] if is_url else item
        if not os.path.isabs(path) or not os.path.isdir(path):
            print(f"build-offline.sh: ignoring pip source {item} (not a folder)", file=sys.stderr)
            return None
        # an index folder (.../simple) links to ../../files/...: serve its parent
        top, sub = (os.path.dirname(path.rstrip("/")), os.path.basename(path.rstrip("/"))) if is_url else (path, "")
        if top not in self.served:
            self.served[top] = f"src{len(self.served)}"
            os.symlink(top, os.path.join(self.serve_dir, self.served[top]))
        return f"http://127.0.0.1:{self.port}/{self.served[top]}/{sub}".rstrip("/") + "/"


def build_args(settings: Mapping[str, str], server: Server) -> dict[str, str]:
    """``PIP_*`` build arguments: every source as a URL the build can reach."""
    args = {}
    for key in URL_KEYS:
        if key in settings:
            urls = [u for u in (server.url_for(item) for item in settings[key].split()) if u]
            if urls:
                args[env_name(key)] = " ".join(urls)
    if "trusted-host" in settings:
        args["PIP_TRUSTED_HOST"] = settings["trusted-host"]
    return args


def main(argv: list[str]) -> int:
    serve_dir, port = argv
    try:
        listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    except OSError:
        listed = ""
    server = Server(serve_dir, port)
    for name, value in build_args(pip_settings(listed, os.environ), server).items():
        print(f"{name}={value}")
    print(f"SERVE={len(server.served)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
