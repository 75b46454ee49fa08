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
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from petseg.errors import ConfigError, InputError, OutputError, PetsegError
from petseg.io import write_text
from petseg.settings import Settings
from petseg.stages import EnsembleMaps, Prediction, load_study, restore_prediction, write_prediction

log = logging.getLogger(__name__)

MANIFEST = "petseg-run.json"
CASE_LOG = "petseg-run.jsonl"


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
            paths += [folder / f"{self.name}_lesions.json", folder / f"{self.name}_lesions.csv"]
        if self.qc:
            paths.append(folder / f"{self.name}_qc.png")
        return [*paths, self.mask]

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
        render_qc(pet=pet, mask=prediction.mask, doubtful=doubtful, output=output_dir / f"{name}_qc.png", title=name)
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
        write_text(json.dumps(self.header, indent=2) + "\n", self.folder / MANIFEST)

    def completed(self) -> dict[str, dict]:
        """case -> its last line, for cases whose last line is "done" with this run's key."""
        last: dict[str, dict] = {}
        if not self.case_log.is_file():
            return {}
        with self.case_log.open() as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash of the writer's machine
                if isinstance(entry, dict) and "case" in entry and entry.get("status") != "skipped":
                    last[entry["case"]] = entry
        return {case: e for case, e in last.items() if e.get("status") == "done" and e.get("run_key") == self.key}

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
        fd = os.open(self.case_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one line at a time from every shard sharing the folder
            if os.write(fd, data) != len(data):
                raise OSError(f"{self.case_log}: short write")
            os.fsync(fd)
        finally:
            os.close(fd)


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
    if manifest is not None:
        manifest.start()
        if not overwrite:
            todo = _not_done(todo, manifest, summary)
    # disable=None: no bar when stderr is not a terminal (a log file would get one line per redraw)
    quiet = not progress or len(todo) < 2
    bar = tqdm(total=len(todo), desc="cases", unit="case", disable=True if quiet else None, dynamic_ncols=True)
    try:
        if workers == 0:
            _sequential(todo, predictor, manifest, summary, bar)
        else:
            _pipelined(todo, predictor, manifest, summary, bar, workers=workers)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _not_done(jobs: list[Job], manifest: Manifest, summary: Summary) -> list[Job]:
    completed = manifest.completed()
    todo = []
    for job in jobs:
        entry = completed.get(job.name)
        outputs = job.outputs()
        if (
            entry is not None
            and {p.name for p in outputs} <= set(entry.get("outputs", []))
            and all(p.is_file() for p in outputs)
            and entry.get("clicks") == job.clicks_key()
        ):
            summary.skipped.append(job.name)
            manifest.append(
                {"case": job.name, "status": "skipped", "message": "done before, same model, settings and clicks"}
            )
        else:
            todo.append(job)
    if summary.skipped:
        log.info(
            "%d case(s) done before with this model, settings and clicks: skipped (--overwrite redoes them)",
            len(summary.skipped),
        )
    return todo


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
                **({"clicks": job.clicks_key()} if job.clicks is not None else {}),
            }
        )


def _record_failed(job: Job, err: BaseException | str, manifest: Manifest | None, summary: Summary) -> None:
    from petseg.frontend import describe

    if isinstance(err, str):
        message = err
    elif isinstance(err, PetsegError | OSError | MemoryError):
        message = describe(err)
    else:
        message = f"internal error: {type(err).__name__}: {err}"
    summary.failed[job.name] = message
    log.error("case %s failed: %s", job.name, message)
    if manifest is not None:
        manifest.append({"case": job.name, "status": "failed", "message": message})


# a case's own failures; a model or configuration error ends the run (it would repeat)
FAILURES = (InputError, OutputError, OSError, MemoryError)
WORKER_DIED = "a background worker process died (killed for memory?)"


def _sequential(
    jobs: list[Job], predictor: NetworkStage, manifest: Manifest | None, summary: Summary, bar: tqdm
) -> None:
    for job in jobs:
        log.info("case %s", job.name)
        summary.max_in_flight = 1
        try:
            start = time.monotonic()
            loaded = load_job(job, predictor.settings)
            maps = _network(predictor, loaded, start)
            finished = finish_job(job, maps, loaded.record, predictor.settings)
        except FAILURES as err:
            _record_failed(job, err, manifest, summary)
        else:
            _record_done(
                job,
                {**loaded.seconds, **predictor.timings, **finished.seconds},
                finished.lesion_voxels,
                manifest,
                summary,
            )
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
    jobs: list[Job], predictor: NetworkStage, manifest: Manifest | None, summary: Summary, bar: tqdm, *, workers: int
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
        """Submit, first replacing a pool that broke since its last result was read."""
        try:
            return pool.submit(function, *args)
        except BrokenProcessPool:
            restart()
            return pool.submit(function, *args)

    def top_up() -> None:
        while queue and len(loading) < workers:
            job = queue.popleft()
            loading.append((job, submit(_worker_load, job, predictor.settings)))

    def failed(job: Job, err: BaseException) -> None:
        _replay(getattr(err, "logs", []))
        _record_failed(job, WORKER_DIED if isinstance(err, BrokenProcessPool) else err, manifest, summary)
        bar.update()

    def collect(job: Job, future: Future, seconds: dict[str, float]) -> None:
        try:
            finished = future.result()
        except BaseException as err:  # a worker's failure is this case's failure
            failed(job, err)
            if isinstance(err, BrokenProcessPool):
                restart()
            return
        _replay(finished.logs)
        _record_done(job, {**seconds, **finished.seconds}, finished.lesion_voxels, manifest, summary)
        bar.update()

    def restart() -> None:
        """A dead worker breaks every pending future: fail the cases being finished (their
        maps are gone) unless they were written already, load the others again once, in a
        new pool."""
        nonlocal pool
        while finishing:
            job, future, seconds = finishing.popleft()
            if future.done() and not future.cancelled() and future.exception() is None:
                collect(job, future, seconds)  # written before the pool broke
            else:
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
            except BaseException as err:
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
            except FAILURES as err:
                _record_failed(job, err, manifest, summary)
                bar.update()
                continue
            seconds, record = {**loaded.seconds, **predictor.timings}, loaded.record
            del loaded  # the network input is no longer needed
            while len(finishing) >= workers:  # bounded: wait for the oldest write first
                collect(*finishing.popleft())
            finishing.append((job, submit(_worker_finish, job, maps, record, predictor.settings), seconds))
            summary.max_in_flight = max(summary.max_in_flight, len(loading) + len(finishing))
        while finishing:
            collect(*finishing.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
