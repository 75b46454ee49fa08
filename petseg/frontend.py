"""What the ``petseg`` CLI and the Grand Challenge ``process.py`` share: the argument parser,
logging, the speed options, and the error edge (a user's mistake or a failing environment
becomes one line on stderr and a non-zero exit code, never a traceback).

Routine log lines go to stdout and only warnings and errors to stderr: Grand Challenge marks
a job that wrote to stderr as having warnings.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

log = logging.getLogger("petseg")


def available_cpus(*, cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota (a
    container limited with ``--cpus 4`` on a 64-core host gets 4, not 64)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            if period_file is None:  # cgroup v2: "<quota> <period>" or "max <period>"
                quota, period = (cgroup / quota_file).read_text().split()[:2]
            else:  # cgroup v1
                quota, period = (cgroup / quota_file).read_text().strip(), (cgroup / period_file).read_text().strip()
        except (OSError, ValueError):
            continue
        if quota not in ("max", "-1") and int(period) > 0:
            cpus = min(cpus, max(1, int(quota) // int(period)))
        break
    return max(1, cpus)


def configure_threads(environ: MutableMapping[str, str] = os.environ) -> int:
    """Thread pools sized to :func:`available_cpus` unless the user set them; must run before
    torch and SimpleITK are imported (they read these variables once). Returns the count."""
    cpus = available_cpus()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        environ.setdefault(name, str(cpus))
    return int(environ["OMP_NUM_THREADS"])


class _DefaultsFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown_already = "default" in text or default is None or default is False or default == argparse.SUPPRESS
        if shown_already or not action.option_strings:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default {shown.replace('%', '%%')})"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors as one line (``prog: error: argument --x: ...``), exit code 2,
    and each option's default in its help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class _CurrentStream(logging.StreamHandler):
    """Writes to whatever sys.stdout / sys.stderr is at the time (tests swap them), around
    any tqdm progress bar."""

    def __init__(self, name: str, *, below: int | None = None) -> None:
        super().__init__()
        self._name = name
        if below is not None:
            self.addFilter(lambda record: record.levelno < below)

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:  # through tqdm, so a log line never breaks a progress bar
            tqdm.write(self.format(record), file=getattr(sys, self._name))
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)


def setup_logging(*, verbose: bool = False, quiet: bool = False) -> None:
    """petseg's log: INFO (DEBUG with ``verbose``) and below to stdout, WARNING and up to stderr."""
    formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")
    for handler in [h for h in log.handlers if isinstance(h, _CurrentStream)]:
        log.removeHandler(handler)
    errors = _CurrentStream("stderr")
    errors.setLevel(logging.WARNING)
    for handler in (_CurrentStream("stdout", below=logging.WARNING), errors):
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


def number(kind: type, *, low: float, high: float | None = None, low_open: bool = False) -> Callable[[str], Any]:
    """argparse ``type=`` for a number in [low, high] ((low, high] with ``low_open``), with the
    value named in the error."""
    where = f"{'(' if low_open else '['}{low:g}, {'inf)' if high is None else f'{high:g}]'}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not (value > low if low_open else value >= low) or (high is not None and not value <= high):
            raise argparse.ArgumentTypeError(f"must be in {where}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__} in {where}"
    return parse


def positive(kind: type) -> Callable[[str], Any]:
    """A number > 0."""
    return number(kind, low=0, low_open=True)


def device_name(text: str) -> str:
    """argparse ``type=`` for ``--device``: checked while the arguments are parsed, before torch
    is imported (``gpu`` reads as ``cuda``)."""
    from petseg.errors import ConfigError
    from petseg.settings import check_device

    try:
        return check_device(text or "empty")  # an empty value is a mistake here, not "auto"
    except ConfigError as err:
        raise argparse.ArgumentTypeError(err.problem) from None


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        type=device_name,
        default="auto",
        help="auto | cpu | cuda[:N] | gpu[:N] (default auto: CUDA if available, else the CPU)",
    )


def add_speed_options(p: argparse.ArgumentParser, *, time_budget_default: str = "from model.json") -> None:
    """Options shared by ``petseg predict`` and ``process.py``."""
    from petseg.settings import PRECISIONS, RESAMPLE_BACKENDS

    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="network precision (default auto: bf16 where supported; fp32 is the reference)",
    )
    p.add_argument(
        "--resample-backend",
        choices=RESAMPLE_BACKENDS,
        help="where preprocessing and restore run: sitk (SimpleITK on the CPU, the reference) or torch (on the "
        "network's device); default auto: torch on CUDA, sitk on the CPU",
    )
    p.add_argument("--tta", action="store_true", help="average the 8 mirrorings of each window")
    p.add_argument(
        "--time-budget",
        type=positive(float),
        metavar="SECONDS",
        help=f"drop mirrorings, then folds, if the ensemble would overrun (default {time_budget_default})",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the networks")


def speed_overrides(args: argparse.Namespace) -> dict:
    """``Settings`` overrides from the options of :func:`add_speed_options` (None = model.json's)."""
    return {
        "precision": args.precision,
        "resample_backend": args.resample_backend,
        "tta": args.tta or None,
        "time_budget_s": args.time_budget,
        "compile": args.compile or None,
    }


class Terminated(BaseException):
    """A SIGTERM or SIGHUP (how Grand Challenge, SLURM and a closed terminal stop a job) as an
    exception, so that the clean-up of a failure runs: outputs all or none, no temporary files."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_deferral = {"depth": 0, "pending": None}  # deferred_signals' state (the main thread's only)


def _raise_for(signum: int, frame: Any) -> None:
    if _deferral["depth"] > 0:  # inside a critical block: taken up when it ends
        _deferral["pending"] = signum
        return
    signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """SIGTERM/SIGHUP raise :class:`Terminated` and SIGINT KeyboardInterrupt in the main thread
    while the block runs; the previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_for) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def deferred_signals() -> Iterator[None]:
    """A stop signal that arrives during the block takes effect when it ends (a case written
    and recorded together, or neither). Python runs signal handlers in the main thread, so the
    handler itself defers (any thread may receive the signal); the signals are also blocked in
    this thread, so a process spawned here starts with them blocked (see cohort._worker_init)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    _deferral["depth"] += 1
    try:
        yield
    finally:
        _deferral["depth"] -= 1
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        pending, _deferral["pending"] = _deferral["pending"], None
        if pending is not None and _deferral["depth"] == 0:
            if signal.getsignal(pending) is _raise_for:
                _raise_for(pending, None)


def run_guarded(prog: str, command: Callable[[], int], *, verbose: bool = False) -> int:
    """Run ``command``. A :class:`PetsegError` (a bad input, option, model folder or output),
    an operating-system error (permissions, full disk) or running out of memory ends as
    ``<prog>: error: <message>`` on stderr and exit code 1; ``verbose`` adds the traceback.
    SIGTERM/SIGHUP and Ctrl-C run the same clean-up and end with one line and 128 + signal."""
    from petseg.errors import PetsegError

    try:
        with signals_as_exceptions():
            return command()
    except (PetsegError, OSError, MemoryError) as err:
        if verbose:
            log.exception("traceback")
        print(f"{prog}: error: {describe(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated as stop:
        print(f"{prog}: stopped by {signal.Signals(stop.signum).name}; nothing half-written is left", file=sys.stderr)
        return 128 + stop.signum
    except Exception as err:  # noqa: BLE001 - the last edge: one line, never a traceback
        if verbose:
            log.exception("traceback")
        hint = "" if verbose else "; -v shows the traceback"
        print(f"{prog}: error: {describe(err)}{hint}", file=sys.stderr)
        return 1


def describe(err: BaseException) -> str:
    """One line for an error: the message of ours, ``<file>: <reason>`` for an OS error, "out of
    memory" for a failed allocation, else the error's type and first line (a bug of ours)."""
    from petseg.errors import PetsegError, is_out_of_memory

    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or type(err).__name__}"
    if is_out_of_memory(err):
        return "out of memory" + (f" ({_first_line(err)})" if isinstance(err, RuntimeError) else "")
    if isinstance(err, PetsegError | OSError):
        return " ".join(str(err).split()) or type(err).__name__
    return f"internal error: {type(err).__name__}: {_first_line(err)}"


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = next((ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("description:")), None)
    return (text or (lines[0] if lines else type(err).__name__))[:300]
