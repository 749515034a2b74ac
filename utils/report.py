"""The end of a run: every reported number labelled with the rule that chose it, in results.json.

``report(run, records, selected=...)`` writes results.json once, while the run still holds its
folder: the engine's records (last epoch, best on the test set, best on the validation split),
the test-time variants the run's flags ask for on the last-epoch model, and, when an entry
script asks for them (train_LCSL.py, as the LCSL paper reports), variants of the selected
checkpoint best.pth. All variants go through ``utils.evaluation.evaluate_variants``.
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional, Sequence

from datasets import dataset_entry
from utils import dist
from utils.checkpoint import git_commit, load_checkpoint
from utils.engine import resolve_amp
from utils.evaluation import Variant, evaluate_variants, flag_variants
from utils.metrics import SELECTION_METRICS
from utils.run import Run, selection_rule


def _test_scope(run: Run, records: Dict[str, Any]) -> str:
    interval = run.config.run.test_interval
    if interval == 1:
        return ""
    return (f", over the {records.get('test_evaluations', 0)} epochs whose test set was evaluated "
            f"(--test_interval {interval}: every {interval} epochs, validation improvements and the last)")


def labelled_records(run: Run, records: Dict[str, Any]) -> Dict[str, Any]:
    """The engine's records as results.json entries, each with the rule that produced it."""
    config, data = run.config, run.data
    metric = SELECTION_METRICS[run.method.selection_metric]
    results: Dict[str, Any] = {
        "dataset": data.name, "method": config.method, "arch": config.arch, "seed": config.run.seed,
        # --imb_factor only shapes the datasets whose long tail is cut here (CIFAR, SVHN).
        "imb_factor": config.data.imb_factor if dataset_entry(config.dataset).small_images else None,
        "imb_factor_unlabel": (config.imb_factor_unlabel or config.data.imb_factor) if config.unlabeled else None,
        "train_counts": list(data.train_counts), "labeled_counts": list(run.labeled_counts),
        "git_commit": git_commit(),
        "last": {**records.get("last", {}), "rule": "last epoch"},
        "best_on_test": {**records.get("best_on_test", {}),
                         "rule": f"best {metric} on the TEST set (test-set selection, as in the papers' "
                                 "code: optimistic, not a clean estimate)" + _test_scope(run, records)},
        "selected_checkpoint": {"file": "best.pth", "rule": selection_rule(run.method, config.select_on),
                                "epoch": records.get(f"best_on_{config.select_on}", {}).get("epoch")},
    }
    if "best_on_val" in records:
        results["best_on_val"] = {**records["best_on_val"],
                                  "rule": f"test numbers of the epoch with the best validation {metric} "
                                          "(selection_score is that validation score)"}
    results["select_on"] = config.select_on
    if config.unlabeled:
        results.update(unlabeled_pool=_pool_kind(config.unlabeled),
                       unlabeled_images=sum(data.train_counts) - sum(run.labeled_counts))
    results.update({k: v for k, v in records.items() if k.startswith("method/")})
    return results


def _pool_kind(path: str) -> str:
    """What D_U was drawn from (datasets.semi.POOL_KINDS), so tables tell a run on the papers'
    pool from one on a substitute; 'unrecorded' when the file cannot be read any more."""
    from datasets.semi import pool_kind

    try:
        return pool_kind(path)
    except Exception:  # moved, damaged or replaced since training began: the label only says so
        return "unrecorded"


def evaluate_named(run: Run, variants: Sequence[Variant], prefix: str, rule: str,
                   extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """results.json entries `<prefix>_<variant>` for the method's current weights on the test set."""
    run.method.eval()
    summaries = evaluate_variants(run.method, variants, run.loaders["test"], run.inputs, run.ctx,
                                  run.data.train_counts, run.config.run.amp)
    entries = {}
    for variant, summary in summaries.items():
        name = variant.name(prefix)
        entries[name] = {**summary, **(extra or {}), "rule": f"{rule}; test set, {variant.describe(run.method.tau_norm_keeps_bias)}"}
        run.logger.info(f"{name}: top1={summary['top1']:.2f}")
    return entries


def evaluate_selected(run: Run, variants: Sequence[Variant]) -> Dict[str, Any]:
    """The variants of best.pth (the selected checkpoint), under the names selected_*; loads its
    weights into the run's method, so it comes after every last-epoch evaluation."""
    began = time.time()
    payload = load_checkpoint(os.path.join(run.run_dir, "best.pth"))
    run.method.load_state_dict(payload["state_dict"], strict=True)
    epoch = int(payload["epoch"])
    chosen = f"best.pth = the model of epoch {epoch}, the {selection_rule(run.method, run.config.select_on)}"
    entries = evaluate_named(run, variants, "selected", chosen, extra={"epoch": epoch})
    entries["selected_report"] = {"checkpoint": "best.pth", "epoch": epoch, "select_on": run.config.select_on,
                                  "rule": chosen, "variants": [v.name("selected") for v in variants],
                                  "time_s": time.time() - began}
    return entries


def trained_precision(records: Dict[str, Any], current: str) -> Dict[str, Any]:
    """``precision``: the one the run trained in; 'mixed' when it changed, 'unknown' when some
    epochs came from a checkpoint that predates the count ('unrecorded' in ``precision_epochs``,
    the epochs per precision) and may have been in another."""
    epochs = dict(records.get("precision_epochs") or {current: 0})
    known = set(epochs) - {"unrecorded"}
    if len(known) > 1:
        precision = "mixed"
    elif epochs.get("unrecorded"):
        precision = "unknown"
    else:
        precision = known.pop() if known else current
    return {"precision": precision, "precision_epochs": epochs}


def report(run: Run, records: Dict[str, Any], selected: Sequence[Variant] = ()) -> Dict[str, Any]:
    """Writes results.json (rank 0) and returns it: the labelled records, the flag-chosen variants
    of the last-epoch model (last_*) and the `selected` variants of best.pth (selected_*)."""
    config = run.config
    results = labelled_records(run, records)
    variants = flag_variants(config.run.tta_flip, config.eval_tau_norm, config.eval_posthoc_tau)
    if variants:
        results.update(evaluate_named(run, variants, "last", "last epoch"))
    if selected:
        results.update(evaluate_selected(run, selected))
    results.update({
        "label": run.label, "run_dir": run.run_dir, "method_options": dict(config.method_options),
        "device": str(run.ctx.device) + (f" x{run.ctx.world_size}" if run.ctx.distributed else ""),
        "hardware": dist.describe_hardware(run.ctx),
        # What --amp auto became: a CPU without native bf16 trains in fp32, so the same command
        # is a different recipe on another machine ('mixed' when a continuation changed it).
        **trained_precision(records, resolve_amp(config.run.amp, run.ctx.device)),
        "wall_time_s": time.time() - run.started, "train_time_s": records.get("elapsed_s")})
    run.logger.write_json("results.json", results)
    run.logger.info(f"results written to {os.path.join(run.run_dir, 'results.json')}")
    return results
