"""The background workers of a pipelined cohort: spawned processes (no torch, their share of
the SimpleITK threads) that run the load and finish stages. A call's log records come back
with its outcome and are shown in order by the main process; a worker leaves when its parent
is gone; a pool that broke (a worker killed for memory) is replaced by :meth:`restart`."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import SimpleITK as sitk

from petseg.frontend import STOP_SIGNALS

log = logging.getLogger("petseg.cohort")


@dataclass
class Outcome:
    """What a call gives back: its value or the exception it raised, and its log records."""

    value: Any = None
    error: BaseException | None = None
    logs: list[logging.LogRecord] | None = None


class _Capture(logging.Handler):
    """Keeps a worker's log records so the main process can show them in order."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args, record.exc_info, record.exc_text = record.getMessage(), None, None, None
        self.records.append(record)


def _run_task(function: Callable[..., Any], *args: Any) -> Outcome:
    """Run ``function`` in a worker with the petseg log captured; a failure is returned, not
    raised, so its records come back with it."""
    logger = logging.getLogger("petseg")
    capture = _Capture()
    logger.addHandler(capture)
    try:
        return Outcome(value=function(*args), logs=capture.records)
    except Exception as err:  # the case's failure, reported by the main process
        return Outcome(error=err, logs=capture.records)
    finally:
        logger.removeHandler(capture)


def replay(records: Iterable[logging.LogRecord]) -> None:
    for record in records:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


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


class WorkerPool:
    """``workers`` spawned processes (a fork of a process holding torch's thread pools or CUDA
    is not safe), each with its share of the CPUs."""

    def __init__(self, workers: int) -> None:
        from petseg.frontend import available_cpus

        self.workers = workers
        self._initargs = (max(1, available_cpus() // (workers + 1)), logging.getLogger("petseg").getEffectiveLevel())
        self._executor = self._new()

    def _new(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(self.workers, mp_context=context, initializer=_worker_init, initargs=self._initargs)

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        """Run ``function(*args)`` in a worker; :meth:`result` gives its value. Call it inside
        ``deferred_signals``: a worker spawned then starts with the stop signals blocked."""
        return self._executor.submit(_run_task, function, *args)

    @staticmethod
    def result(future: Future, *, heading: str | None = None) -> Any:
        """The call's value, after its log records are shown (below ``heading`` when the call
        did its work); its exception is raised here. ``BrokenProcessPool`` when a worker died."""
        outcome = future.result()
        if heading is not None and outcome.error is None:
            log.info("%s", heading)
        replay(outcome.logs or [])
        if outcome.error is not None:
            raise outcome.error
        return outcome.value

    def restart(self) -> None:
        """A new set of workers after one died (every pending task of the old set failed)."""
        log.warning("a background worker process died (killed for memory?): starting new workers")
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._new()

    def close(self) -> None:
        """Let the workers finish the calls in hand, cancel the rest."""
        self._executor.shutdown(wait=True, cancel_futures=True)
