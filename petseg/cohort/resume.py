"""Resuming a cohort into a folder an earlier run wrote: which cases are done (same model,
settings, inputs and clicks, outputs all there), and what an earlier run left of a case that
runs again (removed first, and only what the naming rule gives that case)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec

from petseg.cohort.jobs import Job
from petseg.cohort.manifest import Manifest
from petseg.errors import ConfigError
from petseg.outputs import case_output_names
from petseg.schemas import CaseEntry

log = logging.getLogger(__name__)


def not_done(jobs: list[Job], manifest: Manifest) -> tuple[list[Job], list[str]]:
    """(the jobs to run, the names of those skipped): all but those whose last record is "done"
    with this run's key, the same inputs and clicks, and every output still there."""
    last = manifest.last_entries()
    todo, skipped = [], []
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
            skipped.append(job.name)
        else:
            todo.append(job)
    if skipped:
        log.info(
            "%d case(s) done before with this model, settings and inputs: skipped (--overwrite redoes them)",
            len(skipped),
        )
    return todo, skipped


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
