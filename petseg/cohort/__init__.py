"""Prediction over a cohort: shards, a pipeline around the network, resume, and the run manifest.

- ``shard``: which cases this process takes (``--num-parts``/``--part-id``, torchrun);
- ``jobs``: one case, and its load and finish stages;
- ``manifest``: ``petseg-run.json`` and the case log ``petseg-run.jsonl``;
- ``resume``: what is done, and what an earlier run left of a case that runs again;
- ``workers``: the background processes of a pipelined run;
- ``pipeline``: :func:`run_cohort`, sequential or pipelined.

The network runs in the calling process, one study at a time; with workers the next studies
are read and preprocessed, and the finished ones restored and written, meanwhile, through the
same stage functions (:mod:`petseg.stages`), so the outputs are the same bytes.
"""

from petseg.cohort.jobs import Finished, Job, Loaded, finish_job, load_job
from petseg.cohort.manifest import Manifest, run_key
from petseg.cohort.pipeline import NetworkStage, Summary, default_workers, run_cohort
from petseg.cohort.shard import Shard, rank_device
from petseg.outputs import CASE_LOG, MANIFEST

__all__ = [
    "CASE_LOG",
    "MANIFEST",
    "Finished",
    "Job",
    "Loaded",
    "Manifest",
    "NetworkStage",
    "Shard",
    "Summary",
    "default_workers",
    "finish_job",
    "load_job",
    "rank_device",
    "run_cohort",
    "run_key",
]
