"""``predict_folder``: every case of a folder (nnU-Net naming or a Grand Challenge input)
through one predictor, as nnU-Net's ``predict_from_files``: the cases and their clicks files
found and checked before the model loads, this process's shard taken, the outputs named,
the run manifest kept, and the cohort run (sequential or pipelined)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petseg.errors import ConfigError, InputError
from petseg.layout import Case

log = logging.getLogger("petseg")


@dataclass(frozen=True)
class OutputRequest:
    """What a prediction writes besides each case's mask."""

    probabilities: bool = False  # <case>_probability: the ensemble's mean foreground probability
    uncertainty: bool = False  # <case>_uncertainty: the folds' standard deviation
    report: bool = False  # <case>_lesions.json/.csv
    qc: bool = False  # <case>_qc.png

    def settings(self) -> dict[str, Any]:
        """What the predictor must compute for these outputs (None: model.json's): the lesion
        report and the QC picture show each lesion's confidence and fold vote."""
        confidence = self.report or self.qc
        return {"uncertainty": self.uncertainty or confidence or None, "fold_votes": confidence or None}


@dataclass
class FolderRun:
    """What :func:`predict_folder` did: the cohort's summary (None when no case ran), the
    cases it could not take (incomplete), and the case log."""

    summary: Any = None
    problems: list[InputError] = field(default_factory=list)
    case_log: Path | None = None

    def failures(self) -> list[str]:
        failed = [f"{Path(p.source).name} ({p.problem})" for p in self.problems]
        if self.summary is not None:
            failed += [f"{name} ({message})" for name, message in self.summary.failed.items()]
        return failed


def predict_folder(
    input_dir: str | Path | Case,
    output_dir: str | Path,
    *,
    make_predictor: Callable[[str], Any],
    device: str = "auto",
    outputs: OutputRequest = OutputRequest(),
    clicks: Path | None = None,
    clicks_world: bool = False,
    workers: int | None = None,
    shard: Any = None,
    overwrite: bool = False,
) -> FolderRun:
    """Predict every case of ``input_dir`` (or the one :class:`~petseg.layout.Case` given) into
    ``output_dir``. ``make_predictor(device)`` is
    called once, after the inputs are checked, with this process's device (torchrun: its
    local rank's GPU). ``shard`` defaults to torchrun's part of the cases, else all of them;
    ``workers`` to 2 on a GPU, 0 on the CPU. Incomplete cases are logged and returned, the
    others run."""
    from petseg.atomic import check_output_folder
    from petseg.cohort import Job, Manifest, Shard, default_workers, rank_device, run_cohort
    from petseg.layout import find_cases
    from petseg.outputs import CaseOutputs

    shard = shard or Shard.from_environment() or Shard()
    cases, problems = ([input_dir], []) if isinstance(input_dir, Case) else find_cases(input_dir)
    check_output_folder(output_dir)
    click_files = clicks_by_case([case.name for case in cases], clicks)  # before the model loads
    cases = shard.select(cases, key=lambda case: case.name)
    run = FolderRun(problems=problems if shard.part_id == 0 else [])  # each incomplete case is reported once
    if shard.num_parts > 1:
        log.info("part %d of %d: %d case(s)", shard.part_id, shard.num_parts, len(cases))
    for problem in run.problems:  # an incomplete case does not stop the others
        log.error("skipped: %s", problem)
    if not cases:
        log.info("no case to predict")
        return run
    predictor = make_predictor(rank_device(device))
    jobs = []
    for case in cases:
        names = CaseOutputs.of(case.name, output_dir, case.suffix)
        jobs.append(
            Job(
                name=case.name,
                ct=case.ct,
                pet=case.pet,
                mask=names.mask,
                probability=names.map("probability") if outputs.probabilities else None,
                uncertainty=names.map("uncertainty") if outputs.uncertainty else None,
                report=outputs.report,
                qc=outputs.qc,
                clicks=click_files.get(case.name),
                clicks_world=clicks_world,
            )
        )
    manifest = Manifest(
        output_dir, model=predictor.model_info(), settings=predictor.settings, shard=shard, device=str(predictor.device)
    )
    workers = default_workers(predictor.device.type) if workers is None else workers
    run.summary = run_cohort(
        jobs, predictor=predictor, manifest=manifest, workers=min(workers, len(jobs)), overwrite=overwrite
    )
    run.case_log = manifest.case_log
    return run


def clicks_by_case(cases: list[str], clicks: Path | None) -> dict[str, Path]:
    """``clicks``: a JSON file (one case; its form is checked now, before any work), or a folder
    of ``<case>_clicks.json`` (a case without one runs without clicks; files that match no
    case get a warning: a misnamed file would otherwise be silently unused)."""
    from petseg.clicks import check_clicks_file
    from petseg.layout import clicks_path

    if clicks is None or not cases:
        return {}
    if clicks.is_dir():
        found = {case: clicks_path(clicks, case) for case in cases}
        found = {case: path for case, path in found.items() if path.is_file()}
        unused = sorted(p.name for p in clicks.glob("*.json") if p not in set(found.values()))
        if unused:
            log.warning(
                "--clicks %s: %d file(s) match no case (<case>_clicks.json), not used: %s",
                clicks,
                len(unused),
                ", ".join(unused[:5]) + (" ..." if len(unused) > 5 else ""),
            )
        if not found:
            log.warning(
                "--clicks %s: no <case>_clicks.json for any of the %d case(s): all run without clicks",
                clicks,
                len(cases),
            )
        elif len(found) < len(cases):
            log.info(
                "--clicks %s: %d of %d case(s) have clicks, the others run without", clicks, len(found), len(cases)
            )
        return found
    if not clicks.exists():
        raise ConfigError("--clicks", f"{clicks}: no such file or folder")
    if len(cases) > 1:
        raise ConfigError("--clicks", f"{clicks} is one file but the input holds {len(cases)} cases: give a folder")
    check_clicks_file(clicks)
    return {cases[0]: clicks}
