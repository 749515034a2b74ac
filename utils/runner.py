"""One training run from a TrainConfig: build it, train it, report it.

    run = build_run(config, label)      # utils/run.py: devices, data, method, folder, loaders
    records = train(run)                # utils/training.py: the engine's loop and checkpoints
    results = report(run, records)      # utils/report.py: labelled numbers in results.json

main.py calls ``run_training``; train_LCSL.py calls the same three steps and adds its selected
checkpoint's variants to the report.
"""
from __future__ import annotations

from typing import Any, Dict

from utils import dist
from utils.config import TrainConfig
from utils.report import report
from utils.run import FinishedRun, build_run
from utils.training import train


def run_training(config: TrainConfig, label: str) -> Dict[str, Any]:
    """Trains (or continues) the run `config` describes and returns its results.json contents;
    a run --resume auto finds finished is returned as it is."""
    run = build_run(config, label)
    if isinstance(run, FinishedRun):
        return run.results
    with run:
        results = report(run, train(run))
    dist.barrier()
    return results
