"""The run manifest in an output folder: ``petseg-run.json`` describes the run (version,
model checksums, settings, the earlier runs into the folder) and ``petseg-run.jsonl`` gets
one JSON line per finished, failed or skipped case (one ``write`` on a file opened for
appending, under an exclusive lock, so shards can share the folder; never through a link)."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from petseg.cohort.shard import Shard
from petseg.documents import convert, parse_json_text, read_json
from petseg.errors import InputError, OutputError
from petseg.io import write_text
from petseg.outputs import CASE_LOG, MANIFEST
from petseg.schemas import CaseEntry
from petseg.settings import CHANNELS, Settings

log = logging.getLogger(__name__)

MAX_EARLIER_RUNS = 20


def run_key(model: Mapping[str, Any], settings: Settings) -> str:
    """Checksum of what decides the outputs: the folds' checksums and the settings that
    change results (not the device, window batch, progress bar or compilation)."""
    fields = {k: v for k, v in dataclasses.asdict(settings).items() if k not in Settings.RUNTIME_ONLY}
    if settings.click_sigma_mm is None:
        del fields["click_removal"]  # a CT/PET model takes no clicks: nothing to remove, nothing to redo
    if settings.modalities == CHANNELS:
        del fields["modalities"]  # the folds' checksums already tell a PET-only model apart; keeps older keys
    text = json.dumps({"folds": [f["sha256"] for f in model.get("folds", [])], "settings": fields}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Manifest:
    """``petseg-run.json`` (the run) and ``petseg-run.jsonl`` (one line per case event)."""

    def __init__(
        self, folder: str | Path, *, model: Mapping[str, Any], settings: Settings, shard: Shard, device: str
    ) -> None:
        from petseg import __version__

        self.folder = Path(folder)
        self.key = run_key(model, settings)
        self.shard = shard
        self.device = device
        self.header = {
            "petseg_version": __version__,
            "run_key": self.key,
            "model": dict(model),
            "settings": json.loads(json.dumps(dataclasses.asdict(settings))),
            "case_log": CASE_LOG,
        }
        self._warned: set[str] = set()  # the case log is read more than once a run: say each problem once

    @property
    def case_log(self) -> Path:
        return self.folder / CASE_LOG

    def start(self) -> None:
        """Describe this run in ``petseg-run.json``, keeping the descriptions of earlier runs
        into the folder whose cases may still be there; check the case log can be appended to."""
        header = dict(self.header)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._open_log().close()  # before anything is written: a log that cannot be appended to refuses the run
        if (self.folder / MANIFEST).is_dir():
            raise OutputError(self.folder / MANIFEST, "is a folder; the run's description goes there")
        try:
            earlier = read_json(self.folder / MANIFEST, role="run manifest", error=OutputError)
        except OutputError as err:
            if (self.folder / MANIFEST).exists():
                log.warning("%s: an earlier run's description is unreadable, replaced (%s)", err.source, err.problem)
            earlier = None
        if isinstance(earlier, dict):
            runs = [r for r in earlier.get("earlier_runs", []) if isinstance(r, dict)]
            if earlier.get("run_key") != self.key:
                runs.append({k: v for k, v in earlier.items() if k != "earlier_runs"})
            header["earlier_runs"] = runs[-MAX_EARLIER_RUNS:]
        write_text(json.dumps(header, indent=2) + "\n", self.folder / MANIFEST)

    def entries(self) -> Iterator[CaseEntry]:
        """The case log's lines in order; a malformed line (cut by a crash, edited, not UTF-8,
        of the wrong form) is skipped with a WARNING naming its line number."""
        try:
            fd = os.open(self.case_log, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return
        except OSError as err:
            raise OutputError(self.case_log, f"cannot be read ({err.strerror}; a symbolic link is refused)") from None
        bad: list[str] = []
        with os.fdopen(fd, "rb") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield convert(parse_json_text(line, source=self.case_log), CaseEntry, source=self.case_log)
                except InputError as err:
                    bad.append(f"line {number} ({err.problem})")
        message = f"{self.case_log}: {len(bad)} malformed line(s) skipped: {'; '.join(bad[:3])}"
        if bad and message not in self._warned:
            self._warned.add(message)
            log.warning("%s%s", message, " ..." if len(bad) > 3 else "")

    def last_entries(self) -> dict[str, CaseEntry]:
        """case -> its last line that is not "skipped"."""
        return {entry.case: entry for entry in self.entries() if entry.status != "skipped"}

    def completed(self) -> dict[str, CaseEntry]:
        """case -> its last line, for cases whose last line is "done" with this run's key."""
        return {c: e for c, e in self.last_entries().items() if e.status == "done" and e.run_key == self.key}

    def recorded_outputs(self) -> dict[str, set[str]]:
        """case -> every output name a line of the case log lists for it."""
        recorded: dict[str, set[str]] = {}
        for entry in self.entries():
            recorded.setdefault(entry.case, set()).update(entry.outputs)
        return recorded

    def append(self, entry: Mapping[str, Any]) -> None:
        line = json.dumps(
            {
                **entry,
                "run_key": self.key,
                "part": f"{self.shard.part_id}/{self.shard.num_parts}",
                "device": self.device,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
        data = (line + "\n").encode()
        with self._open_log() as fh:
            fd = fh.fileno()
            fcntl.flock(fd, fcntl.LOCK_EX)  # one line at a time from every shard sharing the folder
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # a line cut by a crash stays alone (and is skipped), not glued to this one
            if os.write(fd, data) != len(data):
                raise OSError(f"{self.case_log}: short write")
            os.fsync(fd)

    def _open_log(self):
        """The case log opened for appending, never through a symbolic link (it would append to
        whatever file the link points at), and only if it is a regular file."""
        try:
            fd = os.open(self.case_log, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as err:
            hint = " (a symbolic link is refused)" if self.case_log.is_symlink() else ""
            raise OutputError(self.case_log, f"cannot be appended to ({err.strerror}){hint}") from None
        fh = os.fdopen(fd, "rb+", buffering=0)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            fh.close()
            raise OutputError(self.case_log, "is not a regular file")
        return fh
