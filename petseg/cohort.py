"""Prediction over a cohort: shards, a pipeline around the network, resume, and the run manifest.

The network runs in the calling process, one study at a time. With ``workers`` > 0 a
process pool reads + preprocesses the next studies and restores + writes the finished ones
meanwhile, through the same stage functions as the sequential path (:mod:`petseg.stages`),
so the outputs are the same bytes. At most ``workers`` studies are being loaded ahead and
at most ``workers`` are being finished, plus the one in the network: host memory holds at
most 2 x workers + 1 studies.

Every finished, failed or skipped case appends one JSON line to ``petseg-run.jsonl`` in
the output folder (one ``write`` on a file opened for appending, under an exclusive lock,
so shards can share the folder); ``petseg-run.json`` describes the run (version, model
checksums, settings). A case whose last line says it is done with the same model and
settings, and whose outputs are all there, is skipped unless ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec
import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from petseg.errors import ConfigError, InputError, OutputError, PetsegError
from petseg.frontend import STOP_SIGNALS, deferred_signals
from petseg.io import file_stamp, write_text
from petseg.layout import case_output_names, qc_path, report_paths
from petseg.schemas import CaseEntry, convert, parse_json_text, read_json
from petseg.settings import Settings
from petseg.stages import EnsembleMaps, Prediction, load_study, restore_prediction, write_prediction

log = logging.getLogger(__name__)

MANIFEST = "petseg-run.json"
CASE_LOG = "petseg-run.jsonl"
MAX_EARLIER_RUNS = 20


# --- which cases this process takes ---------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """Part ``part_id`` of ``num_parts``: every ``num_parts``-th case of the name-sorted list."""

    num_parts: int = 1
    part_id: int = 0

    def __post_init__(self) -> None:
        if self.num_parts < 1 or not 0 <= self.part_id < self.num_parts:
            raise ConfigError(
                "part-id", f"must be in 0..{self.num_parts - 1} for {self.num_parts} parts, got {self.part_id}"
            )

    def select(self, items: Iterable[Any], *, key: Callable[[Any], str]) -> list[Any]:
        """Disjoint over the parts, together every item, independent of the listing order."""
        return sorted(items, key=key)[self.part_id :: self.num_parts]

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Shard | None:
        """The shard of a process started by ``torchrun`` (RANK of WORLD_SIZE), else None."""
        if "RANK" not in environ or "WORLD_SIZE" not in environ:
            return None
        try:
            return cls(int(environ["WORLD_SIZE"]), int(environ["RANK"]))
        except ValueError:
            raise ConfigError(
                "RANK/WORLD_SIZE", f"not integers: {environ['RANK']!r}/{environ['WORLD_SIZE']!r}"
            ) from None


def rank_device(device: str, environ: Mapping[str, str] = os.environ) -> str:
    """Under torchrun each process takes the GPU of its LOCAL_RANK when the device is "auto"
    or "cuda" (an explicit "cuda:N" or "cpu" is kept)."""
    if "LOCAL_RANK" not in environ or device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    return f"cuda:{int(environ['LOCAL_RANK']) % torch.cuda.device_count()}"


# --- one case's work ------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One study: where it comes from and every file it must produce (the mask last)."""

    name: str
    ct: Path
    pet: Path
    mask: Path
    probability: Path | None = None
    uncertainty: Path | None = None
    report: bool = False
    qc: bool = False
    clicks: Path | None = None  # a clicks JSON file for a click-aware model
    clicks_world: bool = False  # its points are in mm (LPS), not PET voxel indices

    def outputs(self) -> list[Path]:
        paths = [p for p in (self.probability, self.uncertainty) if p is not None]
        folder = self.mask.parent
        if self.report:
            paths += report_paths(self.name, folder)
        if self.qc:
            paths.append(qc_path(self.name, folder))
        return [*paths, self.mask]

    def inputs(self) -> dict[str, dict[str, Any]]:
        """What identifies this case's input files now (see :func:`petseg.io.file_stamp`)."""
        return {role: file_stamp(path) for role, path in (("ct", self.ct), ("pet", self.pet))}

    def clicks_key(self) -> str | None:
        """The clicks' part of what decides this case's result: their file's content and how its
        points are read (a changed clicks file must redo the case, not skip it as done)."""
        if self.clicks is None:
            return None
        try:
            content = self.clicks.read_bytes()
        except OSError:
            return "unreadable"  # never matches a done case; the run reports the file
        return f"{hashlib.sha256(content).hexdigest()[:16]}:{'mm' if self.clicks_world else 'voxels'}"


@dataclass
class Loaded:
    image: np.ndarray
    record: Any
    seconds: dict[str, float]
    logs: list[logging.LogRecord]


@dataclass
class Finished:
    lesion_voxels: int
    seconds: dict[str, float]
    logs: list[logging.LogRecord]


class _Capture(logging.Handler):
    """Keeps a worker's log records so the main process can show them in order."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args, record.exc_info, record.exc_text = record.getMessage(), None, None, None
        self.records.append(record)


def _captured(function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, list[logging.LogRecord]]:
    """Run ``function`` with the petseg log captured (only in a worker process)."""
    logger = logging.getLogger("petseg")
    capture = _Capture()
    logger.addHandler(capture)
    try:
        return function(*args, **kwargs), capture.records
    except PetsegError as err:
        err.logs = capture.records  # type: ignore[attr-defined]
        raise
    finally:
        logger.removeHandler(capture)


def load_job(job: Job, settings: Settings) -> Loaded:
    """Read + preprocess (stages "read", "preprocess")."""
    seconds: dict[str, float] = {}
    prep = load_study(
        ct=job.ct, pet=job.pet, settings=settings, timings=seconds, clicks=job.clicks, clicks_world=job.clicks_world
    )
    return Loaded(prep.image, prep.record, seconds, [])


def finish_job(job: Job, maps: EnsembleMaps, record: Any, settings: Settings) -> Finished:
    """Restore + write the mask and the maps asked for, then the report and QC picture."""
    seconds: dict[str, float] = {}
    prediction = restore_prediction(maps, record, settings=settings, timings=seconds)
    write_prediction(
        prediction,
        output=job.mask,
        probability_output=job.probability,
        uncertainty_output=job.uncertainty,
        timings=seconds,
    )
    if job.report or job.qc:
        write_extras(prediction, pet=job.pet, name=job.name, output_dir=job.mask.parent, report=job.report, qc=job.qc)
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(prediction.mask)))
    return Finished(voxels, seconds, [])


def write_extras(
    prediction: Prediction, *, pet: sitk.Image | str | Path, name: str, output_dir: Path, report: bool, qc: bool
) -> None:
    """``<name>_lesions.json``/``.csv`` (each lesion's measures and confidence) and/or
    ``<name>_qc.png`` (doubtful lesions in orange)."""
    from petseg.io import read_image
    from petseg.report import doubtful_mask, lesion_report, write_report

    pet = pet if isinstance(pet, sitk.Image) else read_image(pet, role="PET")
    lesions = lesion_report(
        prediction.mask,
        pet,
        case=name,
        probability=prediction.probability,
        uncertainty=prediction.uncertainty,
        votes=prediction.votes,
        folds=prediction.folds,
    )
    if lesions.get("doubtful_lesions"):
        log.info(
            "%s: %d of %d lesion(s) doubtful (fold vote below a majority)",
            name,
            lesions["doubtful_lesions"],
            lesions["lesion_count"],
        )
    if qc:
        from petseg.qc import render_qc

        doubtful = doubtful_mask(prediction.mask, lesions) if lesions.get("doubtful_lesions") else None
        render_qc(pet=pet, mask=prediction.mask, doubtful=doubtful, output=qc_path(name, output_dir), title=name)
    if report:
        write_report(lesions, output_dir)


def _worker_load(job: Job, settings: Settings) -> Loaded:
    loaded, logs = _captured(load_job, job, settings)
    loaded.logs = logs
    return loaded


def _worker_finish(job: Job, maps: EnsembleMaps, record: Any, settings: Settings) -> Finished:
    finished, logs = _captured(finish_job, job, maps, record, settings)
    finished.logs = logs
    return finished


def _worker_init(threads: int, level: int) -> None:
    # a worker holds both ends of its task queue, so it would wait forever for a parent that
    # was killed: leave as soon as the parent is gone
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="petseg-parent-watch").start()
    # Ctrl-C and a kill of the process group reach the main process alone, which answers them
    # (one line, no worker tracebacks) and shuts the pool down, letting each worker finish the
    # write in hand. The worker was spawned with the stop signals blocked; one that arrived
    # before it left the group is dropped. SIGTERM keeps its default: the pool kills workers so.
    os.setpgrp()
    while signal.sigtimedwait(STOP_SIGNALS, 0) is not None:
        pass
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    logger = logging.getLogger("petseg")
    logger.setLevel(level)
    logger.propagate = False


# --- the run manifest -----------------------------------------------------------------------


def run_key(model: Mapping[str, Any], settings: Settings) -> str:
    """Checksum of what decides the outputs: the folds' checksums and the settings that
    change results (not the device, window batch, progress bar or compilation)."""
    fields = {k: v for k, v in dataclasses.asdict(settings).items() if k not in Settings.RUNTIME_ONLY}
    if settings.click_sigma_mm is None:
        del fields["click_removal"]  # a CT/PET model takes no clicks: nothing to remove, nothing to redo
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

    @property
    def case_log(self) -> Path:
        return self.folder / CASE_LOG

    def start(self) -> None:
        """Describe this run in ``petseg-run.json``, keeping the descriptions of earlier runs
        into the folder whose cases may still be there; check the case log can be appended to."""
        header = dict(self.header)
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
        self._open_log().close()

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
        if bad:
            log.warning(
                "%s: %d malformed line(s) skipped: %s%s",
                self.case_log,
                len(bad),
                "; ".join(bad[:3]),
                " ..." if len(bad) > 3 else "",
            )

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


# --- the run --------------------------------------------------------------------------------


@dataclass
class Summary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    max_in_flight: int = 0  # most studies held at once (loading, in the network, finishing)

    def line(self) -> str:
        rate = len(self.done) / self.seconds * 3600 if self.seconds > 0 and self.done else 0.0
        return (
            f"{len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed "
            f"in {self.seconds:.1f} s ({rate:.0f} studies/hour)"
        )


class NetworkStage(Protocol):
    """What the pipeline needs of a predictor (:class:`petseg.Predictor` is one): its
    settings, the network stage, and that stage's timings."""

    settings: Settings
    timings: dict[str, float]

    def network_maps(self, prep: Any, *, start: float | None = None) -> EnsembleMaps: ...


@dataclass(frozen=True)
class _Prep:  # what Predictor.network_maps reads of a Preprocessed
    image: np.ndarray
    record: Any


def default_workers(device_type: str) -> int:
    """2 on a GPU, where the network takes seconds and loading would dominate; 0 on the CPU,
    where the network already uses every core and a worker only competes with it (measured
    in bench/cohort.py: 55 instead of 60 studies/hour on 2 cores)."""
    return 2 if device_type == "cuda" else 0


def run_cohort(
    jobs: Sequence[Job],
    *,
    predictor: NetworkStage,
    manifest: Manifest | None = None,
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Summary:
    """Predict every job: skipped when the manifest says it is done, else load -> network ->
    finish, with ``workers`` background processes (0 = all in this process). A failing case
    is logged, recorded and does not stop the others."""
    if workers < 0:
        raise ConfigError("workers", f"must be >= 0, got {workers}")
    summary = Summary()
    started = time.perf_counter()
    todo = list(jobs)
    check_distinct_outputs(todo)
    recorded: dict[str, set[str]] = {}
    if manifest is not None:
        manifest.start()
        recorded = earlier_outputs(manifest.recorded_outputs(), todo)
        if not overwrite:
            todo = _not_done(todo, manifest, summary)
    # disable=None: no bar when stderr is not a terminal (a log file would get one line per redraw)
    quiet = not progress or len(todo) < 2
    bar = tqdm(total=len(todo), desc="cases", unit="case", disable=True if quiet else None, dynamic_ncols=True)
    try:
        if workers == 0:
            _sequential(todo, predictor, manifest, summary, bar, recorded)
        else:
            _pipelined(todo, predictor, manifest, summary, bar, recorded, workers=workers)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _not_done(jobs: list[Job], manifest: Manifest, summary: Summary) -> list[Job]:
    """The jobs to run: all but those whose last record is "done" with this run's key, the same
    inputs and clicks, and every output still there."""
    last = manifest.last_entries()
    todo = []
    for job in jobs:
        entry = last.get(job.name)
        outputs = job.outputs()
        if (
            entry is not None
            and entry.status == "done"
            and entry.run_key == manifest.key
            and {p.name for p in outputs} <= set(entry.outputs)
            and all(p.is_file() for p in outputs)
            and entry.clicks == job.clicks_key()
            and _same_inputs(entry, job)
        ):
            summary.skipped.append(job.name)
            manifest.append(
                {"case": job.name, "status": "skipped", "message": "done before, same model, settings and inputs"}
            )
        else:
            todo.append(job)
    if summary.skipped:
        log.info(
            "%d case(s) done before with this model, settings and inputs: skipped (--overwrite redoes them)",
            len(summary.skipped),
        )
    return todo


def _same_inputs(entry: CaseEntry, job: Job) -> bool:
    now = job.inputs()
    return set(entry.inputs) == set(now) and all(
        msgspec.structs.asdict(entry.inputs[role]) == stamp for role, stamp in now.items()
    )


def check_distinct_outputs(jobs: Sequence[Job]) -> None:
    """Two cases must never write the same file (``A_0000.mha`` beside ``A_0000.nii.gz``, or a
    case ``A_probability`` beside ``A``'s probability map): refused before any work."""
    names = [job.name for job in jobs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(twice[0], "two cases of that name (e.g. the same study as .nii.gz and .mha): keep one")
    owner: dict[Path, str] = {}
    for job in jobs:
        for path in job.outputs():
            other = owner.setdefault(path, job.name)
            if other != job.name:
                raise ConfigError(str(path), f"written by two cases ({other} and {job.name}): rename one of them")


def earlier_outputs(recorded: Mapping[str, set[str]], jobs: Sequence[Job]) -> dict[str, set[str]]:
    """Of the outputs the case log lists for each case, those an earlier run may really have
    written for it: names the naming rule gives that case, never another case's current
    outputs or the manifest (a crafted line must not make petseg delete other files)."""
    taken = {path.name for job in jobs for path in job.outputs()}
    out = {}
    for job in jobs:
        own = case_output_names(job.name) - (taken - {p.name for p in job.outputs()})
        out[job.name] = recorded.get(job.name, set()) & own
    return out


def clear_earlier_outputs(job: Job, recorded: Mapping[str, set[str]]) -> None:
    """A case that runs starts from nothing: what an earlier run wrote for it (the outputs the
    case log lists in ``recorded``, and this job's own targets) is removed, so no stale file
    (another model's probability map, an old mask) can pass for this run's. ``recorded``
    comes from :func:`earlier_outputs`."""
    folder = job.mask.parent
    names = {p.name for p in job.outputs()} | recorded.get(job.name, set())
    removed = []
    for name in sorted(names):
        path = folder / name
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(name)
    if removed:
        log.info("case %s: removed %d output(s) of an earlier run: %s", job.name, len(removed), ", ".join(removed))


def _record_done(job: Job, seconds: dict[str, float], voxels: int, manifest: Manifest | None, summary: Summary) -> None:
    summary.done.append(job.name)
    total = sum(seconds.values())
    log.info("wrote %s (%d lesion voxels), %.2f s of work", job.mask, voxels, total)
    if manifest is not None:
        manifest.append(
            {
                "case": job.name,
                "status": "done",
                "seconds": {k: round(v, 3) for k, v in seconds.items()},
                "lesion_voxels": voxels,
                "outputs": [p.name for p in job.outputs()],  # in the output folder
                "inputs": job.inputs(),
                **({"clicks": job.clicks_key()} if job.clicks is not None else {}),
            }
        )


def _record_failed(job: Job, err: BaseException | str, manifest: Manifest | None, summary: Summary) -> None:
    from petseg.frontend import describe

    message = err if isinstance(err, str) else describe(err)
    summary.failed[job.name] = message
    log.error("case %s failed: %s", job.name, message)
    if manifest is not None:
        manifest.append({"case": job.name, "status": "failed", "message": message})


WORKER_DIED = "a background worker process died (killed for memory?)"


def _sequential(
    jobs: list[Job],
    predictor: NetworkStage,
    manifest: Manifest | None,
    summary: Summary,
    bar: tqdm,
    recorded: Mapping[str, set[str]],
) -> None:
    for job in jobs:
        log.info("case %s", job.name)
        summary.max_in_flight = 1
        try:
            start = time.monotonic()
            clear_earlier_outputs(job, recorded)
            loaded = load_job(job, predictor.settings)
            maps = _network(predictor, loaded, start)
            with deferred_signals():  # a stop waits until the case is written and recorded
                finished = finish_job(job, maps, loaded.record, predictor.settings)
                seconds = {**loaded.seconds, **predictor.timings, **finished.seconds}
                _record_done(job, seconds, finished.lesion_voxels, manifest, summary)
        except Exception as err:  # any failure is this case's: recorded, and the run goes on
            _record_failed(job, err, manifest, summary)
        bar.update()


def _network(predictor: NetworkStage, loaded: Loaded, start: float | None = None) -> EnsembleMaps:
    predictor.timings = {}
    return predictor.network_maps(_Prep(loaded.image, loaded.record), start=start)


def _replay(records: Iterable[logging.LogRecord]) -> None:
    for record in records:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


def _pipelined(
    jobs: list[Job],
    predictor: NetworkStage,
    manifest: Manifest | None,
    summary: Summary,
    bar: tqdm,
    recorded: Mapping[str, set[str]],
    *,
    workers: int,
) -> None:
    from petseg.frontend import available_cpus

    threads = max(1, available_cpus() // (workers + 1))
    level = logging.getLogger("petseg").getEffectiveLevel()
    # spawn: a fork of a process that holds torch's thread pools (or CUDA) is not safe
    context = multiprocessing.get_context("spawn")

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(threads, level))

    pool = new_pool()
    queue = deque(jobs)
    retried: set[str] = set()
    loading: deque[tuple[Job, Future]] = deque()
    finishing: deque[tuple[Job, Future, dict[str, float]]] = deque()

    def submit(function: Callable[..., Any], *args: Any) -> Future:
        """Submit, first replacing a pool that broke since its last result was read. Called
        inside deferred_signals, with the queue the future goes to: a worker spawned here
        inherits the blocked stop signals (see ``_worker_init``), and no stop lands between a
        submit and its record (a case written by a worker but not known to the run)."""
        try:
            return pool.submit(function, *args)
        except BrokenProcessPool:
            restart()
            return pool.submit(function, *args)

    def top_up() -> None:
        while queue and len(loading) < workers:
            job = queue.popleft()
            if job.name not in retried:
                try:
                    clear_earlier_outputs(job, recorded)
                except OSError as err:
                    _record_failed(job, err, manifest, summary)
                    bar.update()
                    continue
            with deferred_signals():
                loading.append((job, submit(_worker_load, job, predictor.settings)))

    def failed(job: Job, err: BaseException) -> None:
        _replay(getattr(err, "logs", []))
        _record_failed(job, WORKER_DIED if isinstance(err, BrokenProcessPool) else err, manifest, summary)
        bar.update()

    def collect_oldest() -> None:
        """Wait for the oldest case being finished and record it. A stop signal can land
        while waiting (the case stays in ``finishing``), not between popping and recording."""
        job, future, seconds = finishing[0]
        try:
            finished = future.result()
        except Exception as err:  # a worker's failure is this case's failure
            finishing.popleft()
            failed(job, err)
            if isinstance(err, BrokenProcessPool):
                restart()
            return
        with deferred_signals():
            finishing.popleft()
            _replay(finished.logs)
            _record_done(job, {**seconds, **finished.seconds}, finished.lesion_voxels, manifest, summary)
        bar.update()

    def restart() -> None:
        """A dead worker breaks every pending future: fail the cases being finished (their
        maps are gone) unless they were written already, load the others again once, in a
        new pool."""
        nonlocal pool
        log.warning("a background worker process died (killed for memory?): starting new workers")
        while finishing:
            job, future, _ = finishing[0]
            if future.done() and not future.cancelled() and future.exception() is None:
                collect_oldest()  # written before the pool broke
            else:
                finishing.popleft()
                failed(job, BrokenProcessPool())
        for job, _ in reversed(loading):
            if job.name in retried:
                failed(job, BrokenProcessPool())
            else:
                retried.add(job.name)
                queue.appendleft(job)
        loading.clear()
        pool.shutdown(wait=False, cancel_futures=True)
        pool = new_pool()

    try:
        top_up()
        while loading or queue:
            top_up()  # after a pool restart the queue holds cases again
            job, future = loading.popleft()
            try:
                loaded = future.result()
            except Exception as err:
                if isinstance(err, BrokenProcessPool) and job.name not in retried:
                    loading.appendleft((job, future))
                else:
                    failed(job, err)
                if isinstance(err, BrokenProcessPool):
                    restart()
                top_up()
                continue
            log.info("case %s", job.name)
            _replay(loaded.logs)
            top_up()  # the next studies load while this one is in the network
            summary.max_in_flight = max(summary.max_in_flight, len(loading) + len(finishing) + 1)
            try:
                maps = _network(predictor, loaded)
            except Exception as err:
                _record_failed(job, err, manifest, summary)
                bar.update()
                continue
            seconds, record = {**loaded.seconds, **predictor.timings}, loaded.record
            del loaded  # the network input is no longer needed
            while len(finishing) >= workers:  # bounded: wait for the oldest write first
                collect_oldest()
            with deferred_signals():
                finishing.append((job, submit(_worker_finish, job, maps, record, predictor.settings), seconds))
            summary.max_in_flight = max(summary.max_in_flight, len(loading) + len(finishing))
        while finishing:
            collect_oldest()
    except BaseException:  # stopped (Ctrl-C, SIGTERM) or failing: what the workers wrote is recorded, not redone
        pool.shutdown(wait=True, cancel_futures=True)  # the workers finish the write in hand
        with deferred_signals():
            for job, future, seconds in finishing:
                if future.done() and not future.cancelled() and future.exception() is None:
                    done = future.result()
                    _record_done(job, {**seconds, **done.seconds}, done.lesion_voxels, manifest, summary)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
