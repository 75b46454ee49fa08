"""Running a cohort: skip what is done, then load -> network -> finish every case, in this
process or pipelined over background workers; every case's outcome recorded."""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Protocol

from tqdm import tqdm

from petseg.cohort.jobs import (
    Finished,
    Job,
    Loaded,
    finish_job,
    load_job,
    on_device,
    preprocess_job,
    restore_job,
)
from petseg.cohort.manifest import Manifest
from petseg.cohort.resume import check_distinct_outputs, clear_earlier_outputs, earlier_outputs, not_done
from petseg.cohort.workers import WorkerPool
from petseg.errors import ConfigError
from petseg.frontend import deferred_signals
from petseg.settings import Settings
from petseg.stages import EnsembleMaps, case_line

log = logging.getLogger(__name__)

WORKER_DIED = "a background worker process died (killed for memory?)"


@dataclass
class Summary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    max_in_flight: int = 0  # most studies held at once (loading, in the network, finishing)

    def line(self) -> str:
        """The closing line; a rate only from two finished studies on (one says nothing of a
        cohort, and skipped ones took no time)."""
        rate = (
            f" ({len(self.done) / self.seconds * 3600:.0f} studies/hour)"
            if len(self.done) >= 2 and self.seconds > 0
            else ""
        )
        return f"{len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed in {self.seconds:.1f} s{rate}"


class NetworkStage(Protocol):
    """What the pipeline needs of a predictor (:class:`petseg.Predictor` is one): its settings,
    its device (where the torch backend preprocesses and restores) and the network stage,
    which returns its maps and its seconds."""

    settings: Settings
    device: Any

    def run_network(self, image: Any, record: Any, *, start: float | None = None) -> tuple[EnsembleMaps, float]: ...


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
    started = time.perf_counter()
    todo = list(jobs)
    check_distinct_outputs(todo)
    run = _Run(manifest=manifest)
    if manifest is not None:
        manifest.start()
        run.recorded = earlier_outputs(manifest.recorded_outputs(), todo)
        if not overwrite:
            todo, skipped = not_done(todo, manifest)
            for name in skipped:
                run.summary.skipped.append(name)
                manifest.append(
                    {"case": name, "status": "skipped", "message": "done before, same model, settings and inputs"}
                )
    # disable=None: no bar when stderr is not a terminal (a log file would get one line per redraw)
    quiet = not progress or len(todo) < 2
    run.bar = tqdm(total=len(todo), desc="cases", unit="case", disable=True if quiet else None, dynamic_ncols=True)
    try:
        if workers == 0:
            _sequential(todo, predictor, run)
        else:
            _Pipeline(predictor, run, workers=workers).run(todo)
    finally:
        run.bar.close()
    run.summary.seconds = time.perf_counter() - started
    return run.summary


@dataclass
class _Run:
    """Where a cohort's outcomes go: the summary, the manifest, the progress bar."""

    manifest: Manifest | None
    summary: Summary = field(default_factory=Summary)
    recorded: Mapping[str, set[str]] = field(default_factory=dict)  # earlier runs' outputs per case
    bar: Any = None

    def done(self, job: Job, seconds: dict[str, float], finished: Finished) -> None:
        self.summary.done.append(job.name)
        voxels = finished.lesion_voxels
        line = case_line(
            job.name, lesions=finished.lesions, voxels=voxels, seconds=sum(seconds.values()), output=job.mask
        )
        log.info("%s", line)
        if self.manifest is not None:
            self.manifest.append(
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
        self.bar.update()

    def failed(self, job: Job, err: BaseException | str) -> None:
        from petseg.frontend import describe

        message = err if isinstance(err, str) else describe(err)
        self.summary.failed[job.name] = message
        log.error("case %s failed: %s", job.name, message)
        if self.manifest is not None:
            self.manifest.append({"case": job.name, "status": "failed", "message": message})
        self.bar.update()


def _sequential(jobs: list[Job], predictor: NetworkStage, run: _Run) -> None:
    settings, device = predictor.settings, getattr(predictor, "device", None)
    device_stages = on_device(settings, device)
    for job in jobs:
        log.debug("case %s", job.name)
        run.summary.max_in_flight = 1
        try:
            start = time.monotonic()
            clear_earlier_outputs(job, run.recorded)
            loaded = preprocess_job(job, load_job(job, settings, preprocess=not device_stages), settings, device=device)
            maps, network = predictor.run_network(loaded.image, loaded.record, start=start)
            seconds = {**loaded.seconds, "network": network}
            with deferred_signals():  # a stop waits until the case is written and recorded
                if device_stages:
                    maps, restored = restore_job(maps, loaded.record, settings, device=device)
                    seconds.update(restored)
                finished = finish_job(job, maps, loaded.record, settings)
                run.done(job, {**seconds, **finished.seconds}, finished)
        except Exception as err:  # any failure is this case's: recorded, and the run goes on
            run.failed(job, err)


class _Pipeline:
    """The network in this process, one study at a time; ``workers`` background processes
    load the next studies and finish the done ones meanwhile. At most ``workers`` studies
    load ahead and at most ``workers`` are being finished, plus the one in the network: host
    memory holds at most 2 x workers + 1 studies. A dead worker fails the cases being
    finished (their maps are gone) unless they were written, and the others load once more
    in a new set of workers."""

    def __init__(self, predictor: NetworkStage, run: _Run, *, workers: int) -> None:
        self.predictor, self.outcomes, self.workers = predictor, run, workers
        self.device = getattr(predictor, "device", None)
        # the torch backend: workers read and check, this process preprocesses and restores on the device
        self.device_stages = on_device(predictor.settings, self.device)
        self.pool = WorkerPool(workers)
        self.queue: deque[Job] = deque()
        self.retried: set[str] = set()
        self.loading: deque[tuple[Job, Future]] = deque()
        self.finishing: deque[tuple[Job, Future, dict[str, float]]] = deque()

    def run(self, jobs: list[Job]) -> None:
        self.queue.extend(jobs)
        try:
            while self.loading or self.queue:
                self.top_up()  # after a restart the queue holds cases again
                job, future = self.loading.popleft()
                try:
                    loaded = self.pool.result(future, heading=f"case {job.name}")
                except BrokenProcessPool:
                    if job.name not in self.retried:
                        self.loading.appendleft((job, future))
                    else:
                        self.outcomes.failed(job, WORKER_DIED)
                    self.restart()
                    continue
                except Exception as err:
                    self.outcomes.failed(job, err)
                    continue
                self.network(job, loaded)
            while self.finishing:
                self.collect_oldest()
        except BaseException:  # stopped (Ctrl-C, SIGTERM) or failing: what the workers wrote is recorded
            self.pool.close()  # the workers finish the write in hand
            with deferred_signals():
                for job, future, seconds in self.finishing:
                    if future.done() and not future.cancelled() and future.exception() is None:
                        outcome = future.result()
                        if outcome.error is None:
                            self.outcomes.done(job, {**seconds, **outcome.value.seconds}, outcome.value)
            raise
        finally:
            self.pool.close()

    def network(self, job: Job, loaded: Loaded) -> None:
        self.top_up()  # the next studies load while this one is in the network
        self.note_in_flight(1)
        settings = self.predictor.settings
        try:
            loaded = preprocess_job(job, loaded, settings, device=self.device)
            maps, network = self.predictor.run_network(loaded.image, loaded.record)
            seconds, record = {**loaded.seconds, "network": network}, loaded.record
            del loaded  # the network input is no longer needed
            if self.device_stages:
                maps, restored = restore_job(maps, record, settings, device=self.device)
                seconds.update(restored)
        except Exception as err:
            self.outcomes.failed(job, err)
            return
        while len(self.finishing) >= self.workers:  # bounded: wait for the oldest write first
            self.collect_oldest()
        with deferred_signals():
            future = self.submit(finish_job, job, maps, record, self.predictor.settings)
            self.finishing.append((job, future, seconds))
        self.note_in_flight(0)

    def note_in_flight(self, in_network: int) -> None:
        held = len(self.loading) + len(self.finishing) + in_network
        self.outcomes.summary.max_in_flight = max(self.outcomes.summary.max_in_flight, held)

    def submit(self, function: Any, *args: Any) -> Future:
        """Submit (inside deferred_signals), first replacing a pool that broke since its last
        result was read."""
        try:
            return self.pool.submit(function, *args)
        except BrokenProcessPool:
            self.restart()
            return self.pool.submit(function, *args)

    def top_up(self) -> None:
        while self.queue and len(self.loading) < self.workers:
            job = self.queue.popleft()
            if job.name not in self.retried:
                try:
                    clear_earlier_outputs(job, self.outcomes.recorded)
                except OSError as err:
                    self.outcomes.failed(job, err)
                    continue
            with deferred_signals():  # no stop between the submit and its record
                load = functools.partial(load_job, preprocess=not self.device_stages)
                self.loading.append((job, self.submit(load, job, self.predictor.settings)))

    def collect_oldest(self) -> None:
        """Wait for the oldest case being finished and record it. A stop signal can land
        while waiting (the case stays in ``finishing``), not between popping and recording."""
        job, future, seconds = self.finishing[0]
        try:
            finished = self.pool.result(future)
        except BrokenProcessPool:
            self.finishing.popleft()
            self.outcomes.failed(job, WORKER_DIED)
            self.restart()
            return
        except Exception as err:  # a worker's failure is this case's failure
            self.finishing.popleft()
            self.outcomes.failed(job, err)
            return
        with deferred_signals():
            self.finishing.popleft()
            self.outcomes.done(job, {**seconds, **finished.seconds}, finished)

    def restart(self) -> None:
        """A dead worker broke every pending task: record the cases written before it died,
        fail the other ones being finished, load the loading ones again once."""
        while self.finishing:
            job, future, _ = self.finishing[0]
            if future.done() and not future.cancelled() and future.exception() is None:
                self.collect_oldest()  # written before the pool broke
            else:
                self.finishing.popleft()
                self.outcomes.failed(job, WORKER_DIED)
        for job, _ in reversed(self.loading):
            if job.name in self.retried:
                self.outcomes.failed(job, WORKER_DIED)
            else:
                self.retried.add(job.name)
                self.queue.appendleft(job)
        self.loading.clear()
        self.pool.restart()
