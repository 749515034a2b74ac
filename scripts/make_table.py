"""Collect results.json files into Markdown tables (mean ± std over seeds).

    python scripts/make_table.py log/*/ [--paper] [--gains] [--plot per_class.png] [--out table.md]
    python scripts/make_table.py runs/parity --by run.aug_backend run.amp
    python scripts/make_table.py results/cifar10_lt_r100 --gains --pool_precisions

Runs are grouped by dataset, imbalance ratio, method label and architecture, and by any
``--by`` fields of the run's config.json (dotted paths, e.g. ``run.aug_backend``); seeds of the same
group are averaged. Last-epoch numbers and selected-checkpoint numbers are kept in separate
columns, each named after its selection rule, so a test-set-selected number is never mistaken
for a clean one. ``--paper`` adds the numbers the papers report next to ours; ``--gains`` adds
each row's gain over the CE row of the same dataset, ratio and architecture, as the mean ± std
of the per-seed differences (seeds paired), beside the gain the papers report. The plot shades
one standard deviation over seeds around each row's per-class accuracy.

The same flags can train in different precisions (``--amp auto`` is bf16 on a CPU with native
bf16, fp32 on one without), so seeds of different precisions are different rows by default.
``--pool_precisions`` averages them in one row, which says how many seeds each precision gave;
a gain then still pairs a seed's method run only with the CE run of that seed *and* precision.

A results.json that cannot be read (invalid JSON, not a results file, missing keys) is skipped
with a warning naming it, and run folders without one (config.json or last.pth only: still
training, or stopped) are listed below the table as unfinished, so one bad file never loses the
table and an unfinished seed is never silently missing from a mean.
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
import sys
import warnings
from collections import Counter, defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

# Runnable as ``python scripts/make_table.py`` from anywhere: make the packages importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# torch-free: this script stays light
from utils.config import RUN_RECORD_FIELDS, OneLineErrorParser, end_quietly_when_output_closes  # noqa: E402

# Top-1 accuracy (%) reported by the papers (their code selects on the test set), keyed by
# (paper row, dataset, imbalance ratio). BCCL: its README; LCSL: its paper; semi-self: 100 - the
# README's error rates (docs/semi_self.md#reported-results); the CE (ERM), focal and LDAM-DRW baselines: 100 - the
# top-1 errors of Cao et al., NeurIPS 2019, Table 2 (long-tailed CIFAR, ratios 100 and 10), the
# numbers the three papers' baseline rows descend from. ImageNet-LT's ratio is 1280 / 5,
# iNaturalist's 1000 / 2.
PAPER_TOP1: Dict[Tuple[str, str, int], float] = {
    ("ce", "cifar10", 100): 70.36, ("ce", "cifar10", 10): 86.39,
    ("ce", "cifar100", 100): 38.32, ("ce", "cifar100", 10): 55.70,
    ("focal", "cifar10", 100): 70.38, ("focal", "cifar10", 10): 86.66,
    ("focal", "cifar100", 100): 38.41, ("focal", "cifar100", 10): 55.78,
    ("ldam_drw", "cifar10", 100): 77.03, ("ldam_drw", "cifar10", 10): 88.16,
    ("ldam_drw", "cifar100", 100): 42.04, ("ldam_drw", "cifar100", 10): 58.71,
    ("bccl", "cifar10", 100): 85.22, ("bccl", "cifar10", 50): 88.14, ("bccl", "cifar10", 10): 91.92,
    ("bccl", "cifar100", 100): 52.55, ("bccl", "cifar100", 50): 56.89, ("bccl", "cifar100", 10): 65.3,
    ("lcsl", "cifar10", 100): 85.8, ("lcsl", "cifar100", 100): 54.4, ("lcsl", "imagenet_lt", 256): 56.2,
    ("ce_uniform_ssp", "cifar10", 10): 87.72, ("ce_uniform_ssp", "cifar10", 50): 78.20,
    ("ce_uniform_ssp", "cifar10", 100): 73.50, ("ce_uniform_ssp", "cifar100", 10): 57.07,
    ("ce_uniform_ssp", "cifar100", 50): 45.04, ("ce_uniform_ssp", "cifar100", 100): 40.40,
    ("ce_balanced_ssp", "cifar10", 10): 88.43, ("ce_balanced_ssp", "cifar10", 50): 80.40,
    ("ce_balanced_ssp", "cifar10", 100): 76.53, ("ce_balanced_ssp", "cifar100", 10): 58.06,
    ("ce_balanced_ssp", "cifar100", 50): 47.09, ("ce_balanced_ssp", "cifar100", 100): 43.06,
    ("ce_uniform_ssp", "imagenet_lt", 256): 45.6, ("ce_balanced_ssp", "imagenet_lt", 256): 47.6,
    ("crt_ssp", "imagenet_lt", 256): 51.3, ("ce_uniform_ssp", "inat2018", 500): 64.4,
    ("ce_balanced_ssp", "inat2018", 500): 65.9, ("crt_ssp", "inat2018", 500): 68.1,
    ("ce_semi_rhoU1", "cifar10", 50): 83.21, ("ce_semi_rhoU25", "cifar10", 50): 83.12,
    ("ce_semi_rhoU50", "cifar10", 50): 81.64, ("ce_semi_rhoU100", "cifar10", 50): 80.06,
    ("ce_semi_rhoU1", "svhn", 50): 86.93, ("ce_semi_rhoU25", "svhn", 50): 86.64,
    ("ce_semi_rhoU50", "svhn", 50): 86.84, ("ce_semi_rhoU100", "svhn", 50): 85.46,
}
# Run labels -> paper rows. "CE(Balanced)" is class-balanced sampling (the semi-self maintainer);
# its CIFAR code did it with the effective-number Resample rule, ImageNet/iNat with class-aware sampling.
PAPER_ROWS = {"ce_ssp": "ce_uniform_ssp", "ce_effective_number_ssp": "ce_balanced_ssp",
              "balanced_sampling_ssp": "ce_balanced_ssp", "ce_class_aware_ssp": "ce_balanced_ssp"}
METRICS = ("top1", "many", "medium", "few")


def find_results(paths: Sequence[str]) -> List[str]:
    """Every results.json under ``paths``, each file once however it is reached (a folder given
    twice, a run inside a folder also given, a link such as runs/latest -> a run)."""
    found: Dict[str, str] = {}
    for path in paths:
        if os.path.isdir(path):
            candidates = glob.glob(os.path.join(path, "**", "results.json"), recursive=True)
        elif os.path.isfile(path):
            candidates = [path]
        else:
            raise FileNotFoundError(f"no run folder or results.json at {path}")
        for candidate in sorted(candidates):
            real = os.path.realpath(candidate)
            if real not in found or len(candidate) < len(found[real]):  # the plainest name for it
                found[real] = candidate
    return sorted(found.values())


class ResultError(ValueError):
    """A results.json (or the config.json beside it) that cannot be used; the message says why."""


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except json.JSONDecodeError as error:
        raise ResultError(f"invalid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
    except UnicodeDecodeError:
        raise ResultError("not UTF-8 text") from None
    except OSError as error:
        raise ResultError(f"cannot read it ({error.strerror or error})") from None


def _is_number(value: Any) -> bool:
    """null or a finite number: a NaN accuracy would turn every mean of its row into nan."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                             and math.isfinite(value))


def check_result(result: Any) -> None:
    """The fields the table reads must be there and have the right types."""
    if not isinstance(result, dict):
        raise ResultError(f"expected a JSON object, got {type(result).__name__}")
    for key in ("dataset", "last"):
        if key not in result:
            raise ResultError(f"missing key '{key}' (not a results.json of this toolkit?)")
    for key in ("last", "best_on_test", "best_on_val"):
        if key in result and not isinstance(result[key], dict):
            raise ResultError(f"'{key}' must be an object")
        for metric in METRICS:
            if not _is_number(result.get(key, {}).get(metric)):
                raise ResultError(f"'{key}.{metric}' must be a finite number or null")
    for key in ("imb_factor", "imb_factor_unlabel", "train_time_s"):
        if not _is_number(result.get(key)):
            raise ResultError(f"'{key}' must be a finite number or null")
    for key in ("imb_factor", "imb_factor_unlabel"):  # printed as the ratio 1 / factor
        if result.get(key) is not None and not 1e-9 <= result[key] <= 1:
            raise ResultError(f"'{key}' must lie in [1e-9, 1] (an imbalance ratio of at most 1e9), got {result[key]}")
    for key in ("dataset", "label", "method", "arch", "precision", "select_on", "device", "hardware", "git_commit"):
        if result.get(key) is not None and not isinstance(result[key], str):
            raise ResultError(f"'{key}' must be a string, got {type(result[key]).__name__}")
    if "seed" in result and result["seed"] is not None and not (isinstance(result["seed"], int)
                                                               and not isinstance(result["seed"], bool)):
        raise ResultError(f"'seed' must be an integer, got {type(result['seed']).__name__}")
    counts = result.get("labeled_counts") or result.get("train_counts") or []
    if not isinstance(counts, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in counts):
        raise ResultError("'train_counts' / 'labeled_counts' must be lists of integers")


# config.json fields that say where and how a run executed or reported, not what it learned;
# runs that differ only in these (and in the seed) are seeds of one row. The pre-training and
# pseudo-label paths name each seed's own stage-1 run; the label already says _ssp / _semi.
NOT_RECIPE = {*RUN_RECORD_FIELDS, "script", "eval_posthoc_tau", "eval_tau_norm", "pretrained_model", "unlabeled",
              "run.seed", "run.out_dir", "run.root_log", "run.resume", "run.gpu", "run.workers", "run.progress",
              "run.log_interval", "run.eval_interval", "run.test_interval", "run.compile", "run.compile_mode",
              "run.overwrite",
              "run.deterministic", "run.tta_flip", "run.tb_save",
              # --amp as typed: what it became (the precision, below) is what shapes training.
              "run.amp",
              "data.data_root", "data.split_dir", "data.train_list", "data.val_list", "data.test_list",
              "data.download"}


def _flatten(values: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value, sort_keys=True)
    return flat


def recipe_of(config: Dict[str, Any]) -> Tuple[Tuple[str, str], ...]:
    """The config.json fields that shape what a run learns (everything but NOT_RECIPE)."""
    return tuple(sorted((k, v) for k, v in _flatten(config).items() if k not in NOT_RECIPE))


# --amp's names for the precisions as tables print them.
PRECISION_NAMES = {"none": "fp32", "bf16": "bf16", "fp16": "fp16"}


def load_result(path: str, by: Sequence[str] = (), pool_precisions: bool = False) -> Dict[str, Any]:
    """results.json, plus the ``--by`` config fields and the recipe read from the config.json
    beside it (the precision is part of the recipe unless ``pool_precisions``); a ResultError
    says what is wrong with a file that cannot be used."""
    result = _read_json(path)
    check_result(result)
    config_path = os.path.join(os.path.dirname(path), "config.json")
    config: Dict[str, Any] = {}
    if os.path.isfile(config_path):
        try:
            config = _read_json(config_path)
        except ResultError as error:
            if by:
                raise ResultError(f"its config.json (read for --by): {error}") from None
    result["by"] = tuple(str(config_field(config, field)) for field in by)
    result["by_found"] = tuple(config_field(config, field, missing=ABSENT) is not ABSENT for field in by)
    asked = config_field(config, "run.amp") if isinstance(config, dict) else "?"
    result["precision"] = (result.get("precision") or logged_precision(os.path.dirname(path))
                           or (asked if asked in PRECISION_NAMES else None))  # --amp none/bf16/fp16 is itself
    result["recipe"] = None
    if isinstance(config, dict) and config:
        # Seeds trained in different precisions are different rows, whatever their flags say.
        pooled = () if pool_precisions else (("precision", json.dumps(precision_name(result))),)
        result["recipe"] = tuple(sorted(recipe_of(as_trained(config, result)) + pooled))
    return result


def as_trained(config: Dict[str, Any], result: Dict[str, Any]) -> Dict[str, Any]:
    """The config as the results were trained, for the recipe:
    - --epochs as results.json's last epoch says (a run continued with another --epochs may have
      a config.json that says otherwise: written before config.json followed such a change, or
      extended again and not finished yet);
    - the changes of --epochs that took effect before that epoch (from, to, after which epoch;
      not when or by which command): a run continued from 200 to 400 epochs followed another
      learning-rate path than a fresh 400-epoch run, so they are not seeds of one row;
    - the images per class (the labelled ones), so runs of other list files are never averaged
      or paired whatever their flags say."""
    last = result.get("last")
    epoch = last.get("epoch") if isinstance(last, dict) else None
    trained = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None
    optim = dict(config["optim"]) if isinstance(config.get("optim"), dict) else {}
    if trained is not None and "epochs" in optim:
        optim["epochs"] = trained
    changes = config.get("epochs_changed") if isinstance(config.get("epochs_changed"), list) else []
    history = [[c.get("from"), c.get("to"), c.get("after_epoch")] for c in changes
               if isinstance(c, dict) and (trained is None or not isinstance(c.get("after_epoch"), int)
                                           or c["after_epoch"] < trained)]
    if history:
        optim["epochs_changed"] = history
    data = dict(config["data"]) if isinstance(config.get("data"), dict) else {}
    counts = result.get("labeled_counts") or result.get("train_counts")
    if counts:
        data["counts"] = counts
    return {**config, **({"optim": optim} if optim else {}), **({"data": data} if data else {})}


def precision_name(result: Dict[str, Any]) -> str:
    """'bf16', 'fp32', 'fp16', or 'unrecorded' for a run that names none."""
    precision = result.get("precision")
    return PRECISION_NAMES.get(precision, precision) or "unrecorded"


def seeds_cell(members: List[Dict[str, Any]]) -> str:
    """How many seeds a row averages, how many of each precision when they differ, and which
    seed it holds more than one run of (the same training twice is no second seed)."""
    counts = Counter(precision_name(m) for m in members)
    cell = str(len(members))
    if len(counts) >= 2:
        cell += f" ({', '.join(f'{name} {count}' for name, count in sorted(counts.items()))})"
    seeds = Counter(m.get("seed") for m in members if m.get("seed") is not None)  # unrecorded: not comparable
    repeated = sorted((str(seed), n) for seed, n in seeds.items() if n > 1)
    if repeated:
        cell += "; " + ", ".join(f"seed {seed} {n} times" for seed, n in repeated)
    return cell


def logged_precision(folder: str) -> Optional[str]:
    """The precision a run's log.txt names (``precision: bf16 (--amp auto)``), for results.json
    files written before they recorded it; None when there is no such line."""
    path = os.path.join(folder, "log.txt")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as lines:
        found = {m.group(1) for m in (re.search(r"; precision: (\w+) \(--amp ", line) for line in lines) if m}
    # One line per start: a run resumed where --amp auto meant another precision has two.
    return found.pop() if len(found) == 1 else ("mixed" if found else None)


def load_results(paths: Sequence[str], by: Sequence[str] = (),
                 pool_precisions: bool = False) -> List[Dict[str, Any]]:
    """Every usable results.json; the others are skipped with a warning on stderr naming them."""
    results = []
    seen: Dict[str, int] = {}  # run identity -> its index in results
    for path in paths:
        try:
            result = load_result(path, by, pool_precisions)
        except ResultError as error:
            print(f"make_table.py: warning: skipped {path}: {error}", file=sys.stderr)
            continue
        result["path"] = path
        identity = run_identity(result)
        if identity in seen:  # a copy, e.g. results/ collected from the run folder also given
            index = seen[identity]
            skipped, kept = result, results[index]
            if precision_name(kept) == "unrecorded" and precision_name(result) != "unrecorded":
                # The run folder's log names the precision its copy's record lacks: keep that one.
                results[index], skipped, kept = result, kept, result
            print(f"make_table.py: warning: skipped {skipped['path']}: the same run as {kept['path']} (a copy), "
                  "counted once", file=sys.stderr)
            continue
        seen[identity] = len(results)
        results.append(result)
    return results + [row for result in results for row in variant_rows(result)]


# results.json keys of test-time variants (utils.evaluation.Variant.name): the last-epoch model's
# under --tau_norm / --posthoc_tau / --tta_flip ("last_tau_norm1"), and the selected checkpoint's
# where a method's final report scores them (LCSL: "selected_tau_norm1.9_flip_tta").
VARIANT_PREFIXES = ("last_", "selected_")


def variant_rows(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """A row per test-time variant a run scored (``ce+tau_norm1``): the variant's last-epoch
    numbers and its selected checkpoint's, each where the run scored it, the latter under the
    run's own selection rule. The same training as the plain row, so a gain over it (paired by
    seed) is the variant's gain. A damaged entry is skipped with a warning naming it."""
    entries: Dict[str, Dict[str, Any]] = {}
    for key, entry in result.items():
        prefix = next((p for p in VARIANT_PREFIXES if key.startswith(p)), None)
        if prefix is None or not isinstance(entry, dict) or "top1" not in entry:
            continue  # last_val, selected_checkpoint, selected_report: no variant
        if not all(_is_number(entry.get(metric)) for metric in METRICS):
            print(f"make_table.py: warning: skipped the entry '{key}' of {result.get('path', 'a run')}: its metrics must be "
                  "finite numbers or null", file=sys.stderr)
            continue
        entries.setdefault(key[len(prefix):], {})[prefix] = entry
    rows = []
    for variant, found in sorted(entries.items()):
        row = {k: v for k, v in result.items() if not k.startswith(("last", "best_on_", "selected"))}
        row.update(last=found.get("last_", {}), variant=variant)
        if "selected_" in found:
            row["variant_selection"] = (selected_entry(result)[0], found["selected_"])
        rows.append(row)
    return rows


def run_identity(result: Dict[str, Any]) -> str:
    """What tells one training run from another: where it ran, its seed and label, how long it
    took to the second and its last evaluation; a copy of its results.json matches on all."""
    fields = {key: result.get(key) for key in ("run_dir", "seed", "label", "method", "wall_time_s", "train_time_s")}
    return json.dumps({**fields, "last": result.get("last")}, sort_keys=True, default=str)


# Files a run writes before its results.json: a folder holding one of them but no results.json
# is a run that is still going or stopped early.
RUN_MARKERS = ("config.json", "last.pth")


def find_unfinished(paths: Sequence[str]) -> List[str]:
    """Run folders under ``paths`` with config.json or last.pth but no results.json."""
    folders = set()
    for path in paths:
        if os.path.isdir(path):
            for marker in RUN_MARKERS:
                found = glob.glob(os.path.join(path, "**", marker), recursive=True)
                folders.update(os.path.dirname(p) for p in found)
    return sorted(f for f in folders if not os.path.isfile(os.path.join(f, "results.json")))


def unfinished_note(folders: Sequence[str]) -> str:
    lines = [f"Unfinished runs (no results.json yet), not in the table: {len(folders)}"]
    for folder in folders:
        present = [m for m in RUN_MARKERS if os.path.isfile(os.path.join(folder, m))]
        lines.append(f"- {folder} ({', '.join(present)})")
    return "\n".join(lines)


ABSENT = object()  # config_field's answer for a field that is not there (a null value is there)


def config_field(config: Dict[str, Any], dotted: str, missing: Any = "?") -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return missing
        value = value[part]
    return value


def unknown_by_fields(results: List[Dict[str, Any]], by: Sequence[str]) -> List[str]:
    """The --by fields that no run's config.json has (a misspelt field would be a column of '?')."""
    return [field for index, field in enumerate(by) if not any(r["by_found"][index] for r in results)]


def imbalance_ratio(result: Dict[str, Any]) -> int:
    """--imb_factor's ratio where the run cut the data itself (CIFAR, SVHN), else the natural
    ratio of the training counts (ImageNet-LT 256, iNaturalist 2018 500)."""
    if result.get("imb_factor"):
        return int(round(1 / result["imb_factor"]))
    # Pseudo-labelled images do not change the dataset's own ratio.
    counts = [count for count in result.get("labeled_counts") or result.get("train_counts", []) if count > 0]
    return int(round(max(counts) / min(counts))) if counts else 1


# The pools the papers drew D_U from (80M-TinyImages, SVHN extra): a run on any other pool
# (datasets.semi.POOL_KINDS) names it in its label and is no row of the papers' tables.
PAPER_POOLS = ("tinyimages", "svhn_extra")


def run_label(result: Dict[str, Any]) -> str:
    """The run's label; pseudo-labelled runs also name the imbalance of their D_U, and the pool
    it came from when that is not the paper's (``ce_semi_leftover_rhoU50``)."""
    label = result.get("label") or result.get("method", "?")
    if result.get("imb_factor_unlabel"):
        # results.json from before the pool was recorded: which pool it was is unknown, so no
        # paper number may stand beside it.
        pool = result.get("unlabeled_pool") or "unrecorded"
        if pool not in PAPER_POOLS:
            label += f"_{pool}"
        label += f"_rhoU{int(round(1 / result['imb_factor_unlabel']))}"
    if result.get("variant"):
        label += f"+{result['variant']}"
    return label


def paper_row(label: str) -> str:
    if "+" in label:  # a test-time variant of a run (variant_rows): no paper reports it
        return label
    if label.startswith("lcsl_"):  # train_LCSL.py labels runs lcsl_<augmentation>_sel<split>
        return "lcsl"
    return PAPER_ROWS.get(label, label)


def group_key(result: Dict[str, Any]) -> Tuple:
    return ((result.get("dataset", "?"), imbalance_ratio(result), run_label(result), result.get("arch", "?"))
            + tuple(result.get("by", ())))


def hardware(result: Dict[str, Any]) -> str:
    """Where a run trained and in which precision (when recorded): the same ``--amp auto`` is bf16
    on a CPU with native bf16 and fp32 on one without."""
    where = result.get("hardware") or result.get("device", "?")
    # /proc/cpuinfo's marks and filler words ("Intel(R) Xeon(R) Processor") say nothing about speed.
    where = re.sub(r"\((R|TM)\)|\s+(CPU|Processor)\b", "", where, flags=re.IGNORECASE)
    precision = result.get("precision")
    return f"{where}, {PRECISION_NAMES.get(precision, precision)}" if precision else where


def selected_entry(result: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """Test numbers of the checkpoint the run selected, and the name of the rule that chose it."""
    if result.get("variant"):  # a variant row: the run's selected checkpoint under that variant, if scored
        return result.get("variant_selection", ("none scored", {}))
    if result.get("select_on", "val" if result.get("best_on_val") else "test") == "val":
        return "best on val", result.get("best_on_val", {})
    return "best on TEST", result.get("best_on_test", {})


def mean_std(values: List[Optional[float]]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def train_time(seconds: List[Optional[float]]) -> str:
    """Mean training time over seeds (epochs only, summed over resumed sessions)."""
    seconds = [s for s in seconds if s is not None]
    if not seconds:
        return "n/a"
    mean = float(np.mean(seconds))
    return f"{mean / 3600:.1f} h" if mean >= 3600 else f"{mean / 60:.0f} min"


def split_recipes(results: List[Dict[str, Any]]) -> Dict[Tuple, List[Dict[str, Any]]]:
    """Groups of seeds: runs of one dataset, ratio, label and architecture whose recipes differ
    (e.g. --epochs, --lr) are never averaged together; each such group's key ends with the
    fields that set it apart, shown after the method label."""
    by_key: Dict[Tuple, List[Dict[str, Any]]] = defaultdict(list)
    for result in results:
        by_key[group_key(result)].append(result)
    groups: Dict[Tuple, List[Dict[str, Any]]] = {}
    for key, members in by_key.items():
        recipes = {m.get("recipe") for m in members if m.get("recipe") is not None}
        if len(recipes) < 2:
            groups[key + ("",)] = members
            continue
        fields = [dict(recipe) for recipe in recipes]
        differing = sorted({k for f in fields for k in set(fields[0]) | set(f) if f.get(k) != fields[0].get(k)})
        for member in members:
            own = dict(member.get("recipe") or ())
            tag = ", ".join(f"{k}={own.get(k, '?')}" for k in differing) if own else "no config.json"
            groups.setdefault(key + (f" [{tag}]",), []).append(member)
    return groups


def build_table(results: List[Dict[str, Any]], paper: bool, by: Sequence[str] = ()) -> str:
    groups = split_recipes(results)
    header = ["dataset", "ratio", "method", "arch"] + list(by) + ["seeds"]
    header += [f"last {m}" for m in METRICS] + ["selected top1", "selection"]
    if paper:
        header.append("paper top1")
    header += ["train time", "hardware"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, members in sorted(groups.items()):
        dataset, ratio, label, arch = key[:4]
        row = [dataset, str(ratio), label + key[-1], arch] + list(key[4:-1]) + [seeds_cell(members)]
        row += [mean_std([m.get("last", {}).get(metric) for m in members]) for metric in METRICS]
        rules = {selected_entry(m)[0] for m in members}
        row += [mean_std([selected_entry(m)[1].get("top1") for m in members]), "/".join(sorted(rules))]
        if paper:
            value = PAPER_TOP1.get((paper_row(label), dataset, ratio))
            row.append("" if value is None else f"{value:.2f}")
        row += [train_time([m.get("train_time_s") for m in members]),
                "/".join(sorted({hardware(m) for m in members}))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def signed(text: str) -> str:
    """'+5.03 ± 0.40' for a mean ± std string that starts with a non-negative number."""
    return text if text.startswith("-") else "+" + text


BASELINE = "ce"  # the row every gain is measured against, as in the three papers' tables


def paired_gains(members: List[Dict[str, Any]], baseline: List[Dict[str, Any]],
                 value) -> Tuple[List[float], int]:
    """Per-seed differences ``value(run) - value(CE run of the same seed)`` over the seeds both
    rows have (a seed's CE run and method run share the data subset, the initial draw and the
    augmentation stream, so pairing removes most of the seed noise); and how many seeds of the
    method had no CE partner. Partners also share the precision: in rows that pool precisions,
    a seed trained in bf16 for one method and in fp32 for the other is not a pair."""
    by_seed = {(m.get("seed"), precision_name(m)): value(m) for m in baseline}
    gains, unpaired = [], 0
    for member in members:
        partner, own = by_seed.get((member.get("seed"), precision_name(member))), value(member)
        if partner is None or own is None:
            unpaired += 1
        else:
            gains.append(own - partner)
    return gains, unpaired


# Recipe fields a gain's two rows must share: the same images and the same training length.
SHARED_FOR_GAINS = ("data.", "optim.epochs", "precision")  # a gain is never measured across precisions


def _shared_recipe(members: List[Dict[str, Any]]) -> Optional[Tuple]:
    recipe = next((dict(m["recipe"]) for m in members if m.get("recipe")), None)
    if recipe is None:
        return None
    return tuple(sorted((k, v) for k, v in recipe.items() if k.startswith(SHARED_FOR_GAINS)))


def build_gains_table(results: List[Dict[str, Any]], by: Sequence[str] = ()) -> str:
    """Each row's gain over the CE row of the same dataset, ratio, architecture, --by fields,
    images, epochs and precision, with its std over paired seeds, beside the gain the papers report."""
    groups = split_recipes(results)
    header = ["dataset", "ratio", "method", "arch"] + list(by) + ["paired seeds"]
    header += [f"gain last {m}" for m in METRICS] + ["gain selected top1", "selection", "paper gain"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for key, members in sorted(groups.items()):
        dataset, ratio, label, arch = key[:4]
        if label == BASELINE:
            continue
        shared = _shared_recipe(members)
        same_place = [group for other, group in groups.items()
                      if other[2] == BASELINE and other[:2] + other[3:-1] == key[:2] + key[3:-1]]
        candidates = [group for group in same_place if shared is None or _shared_recipe(group) in (None, shared)]
        if len(candidates) != 1:
            if same_place:  # CE runs exist here, but none (or no single one) is comparable
                why = "several CE rows qualify" if candidates else "no CE row with the same images, epochs and precision"
                notes.append(f"- {label}{key[-1]} ({dataset} r{ratio}, {arch}): no gain, {why}")
            continue
        baseline = candidates[0]
        # Pairs are made by seed and precision: two runs of one seed and precision on either side
        # leave the pair ambiguous (one precision's seed next to the other's is no duplicate).
        twice = [side for side, runs in (("the CE row", baseline), ("this row", members))
                 if len({(m.get("seed"), precision_name(m)) for m in runs}) < len(runs)]
        if twice:
            notes.append(f"- {label}{key[-1]} ({dataset} r{ratio}, {arch}): no gain, {' and '.join(twice)} "
                         f"{'has' if len(twice) == 1 else 'have'} two runs of one seed")
            continue
        cells = []
        values = [lambda m, metric=metric: m.get("last", {}).get(metric) for metric in METRICS]
        for value in values + [lambda m: selected_entry(m)[1].get("top1")]:
            gains, _ = paired_gains(members, baseline, value)
            cells.append(signed(mean_std(gains)) if gains else "n/a")
        pairs = len(paired_gains(members, baseline, lambda m: 0.0)[0])
        rules = {selected_entry(m)[0] for m in members + baseline}
        ours, theirs = (PAPER_TOP1.get((row, dataset, ratio)) for row in (paper_row(label), BASELINE))
        paper = "" if ours is None or theirs is None else f"{ours - theirs:+.2f}"
        row = [dataset, str(ratio), label + key[-1], arch] + list(key[4:-1]) + [f"{pairs} of {len(members)}"]
        lines.append("| " + " | ".join(row + cells + ["/".join(sorted(rules)), paper]) + " |")
    if len(lines) == 2:
        table = "No gains: no row shares its dataset, ratio, architecture, images, epochs and precision with a CE row."
    else:
        table = "\n".join(lines)
    return table + ("\n\n" + "\n".join(notes) if notes else "")


def plot_per_class(results: List[Dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for key, members in sorted(split_recipes(results).items()):
        dataset, ratio, label = key[:3]
        label += key[-1]
        extra = "".join(f", {value}" for value in key[4:-1])
        counts = members[0].get("train_counts")
        usable = [m for m in members if isinstance(m["last"].get("per_class"), list) and isinstance(counts, list)
                  and len(m["last"]["per_class"]) == len(counts) == len(m.get("train_counts") or [])]
        for member in members:
            if member not in usable:
                print(f"make_table.py: warning: {member.get('run_dir', label)} has no per-class accuracy "
                      "matching its train_counts; left out of the plot", file=sys.stderr)
        if not usable:
            continue
        per_class = np.array([[np.nan if v is None else v for v in m["last"]["per_class"]] for m in usable])
        with warnings.catch_warnings():  # a class no seed scored (all None) is a gap in the line
            warnings.simplefilter("ignore", RuntimeWarning)
            accuracy = np.nanmean(per_class, 0)
        line, = axis.plot(counts, accuracy, marker="o", ms=3,
                          label=f"{label} ({dataset} r{ratio}{extra}, {len(usable)} seed{'s' * (len(usable) > 1)})")
        if len(usable) > 1:  # the spread over seeds: one standard deviation either side
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                spread = np.nanstd(per_class, 0, ddof=1)
            axis.fill_between(counts, accuracy - spread, accuracy + spread, color=line.get_color(), alpha=0.2)
    axis.set_xscale("log")
    axis.set_xlabel("training images of the class")
    axis.set_ylabel("last-epoch test accuracy (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def get_args_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(prog="make_table.py", description=__doc__)
    parser.add_argument("runs", nargs="+", help="run folders, folders of runs, or results.json files")
    parser.add_argument("--paper", action="store_true", help="add the papers' reported top-1")
    parser.add_argument("--gains", action="store_true",
                        help="add a table of each row's gain over CE (paired by seed: mean ± std) beside the "
                             "papers' gain")
    parser.add_output_argument("--plot", figure=True, default=None,
                               help="PNG of per-class accuracy against training count")
    parser.add_output_argument("--out", default=None,
                               help="also write the table (and the unfinished-runs note) to this Markdown file")
    parser.add_argument("--by", nargs="+", default=[], metavar="FIELD",
                        help="also group by these config.json fields (dotted, e.g. run.aug_backend)")
    parser.add_argument("--pool_precisions", action="store_true",
                        help="average seeds trained in different precisions (bf16, fp32) in one row, "
                             "counting each precision's seeds; gains still pair runs of one precision")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        paths = find_results(args.runs)
    except FileNotFoundError as error:
        print(f"make_table.py: error: {error}", file=sys.stderr)
        return 2
    results = load_results(paths, args.by, args.pool_precisions)
    unfinished = find_unfinished(args.runs)
    if not results:
        skipped = f"; {len(paths)} skipped as unreadable" if paths else ""
        waiting = f"; {len(unfinished)} unfinished run(s), e.g. {unfinished[0]}" if unfinished else ""
        print(f"make_table.py: error: no readable results.json under the given paths{skipped}{waiting}",
              file=sys.stderr)
        return 2
    unknown = unknown_by_fields(results, args.by)
    if unknown:
        print(f"make_table.py: error: --by {' '.join(unknown)}: no run's config.json has "
              f"{'this field' if len(unknown) == 1 else 'these fields'}; name fields as dotted config.json keys "
              "(run.aug_backend, optim.lr, method_options.loss)", file=sys.stderr)
        return 2
    table = build_table(results, args.paper, args.by)
    if args.gains:
        table += "\n\nGain over CE (same dataset, ratio and architecture; differences paired by seed):\n\n"
        table += build_gains_table(results, args.by)
    if unfinished:
        table += "\n\n" + unfinished_note(unfinished)
    print(table)
    if args.out:
        with open(args.out, "w") as stream:
            stream.write(table + "\n")
    if args.plot:
        plot_per_class(results, args.plot)
    return 0


if __name__ == "__main__":
    end_quietly_when_output_closes()
    sys.exit(main())
