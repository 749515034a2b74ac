"""Pseudo-label an unlabelled pool with a trained run (step 2 of the semi-supervised pipeline of
Yang & Xu, NeurIPS 2020, docs/semi_self.md#pseudo-labels).

    python scripts/gen_pseudolabels.py --path RUN --pool leftover --out pseudo.npz
    python scripts/gen_pseudolabels.py --path RUN --pool data/ti_80M_selected.pickle --out pseudo.npz
    python scripts/gen_pseudolabels.py --path RUN --pool svhn_extra --out pseudo_svhn.npz
    python scripts/gen_pseudolabels.py --path RUN --pool FOLDER_OR_LIST.txt --out pseudo.npz [--threshold 0.95]

The run's classifier is rebuilt from its checkpoint alone and applied in eval mode, without
test-time augmentation, to every pool image; the .npz file (format in ``datasets/semi.py``) holds hard
labels, confidences, the pool's reference labels where known (used only to select images, as in
the paper) and the checkpoint path. ``--threshold`` keeps only predictions at least that
confident (the paper kept all). Train on the result with ``main.py --unlabeled FILE``.

POOL: ``leftover`` (the training images the run's long-tailed cut left out), ``svhn_extra``
(SVHN's extra split under --pool_root, default the run's data folder), a ``.pickle``/``.pkl`` in
the ``ti_80M_selected.pickle`` format, a folder of images, or a ``path [label]`` list file
(paths relative to --pool_root, default the list's folder).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

# Runnable as ``python scripts/gen_pseudolabels.py`` from the repo root: make the packages importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.checkpoint import add_trust_argument  # noqa: E402
from utils.config import (AMP_CHOICES, GPU_HELP, NON_NEGATIVE_INT, POSITIVE_INT, PROBABILITY, ConfigError,  # noqa: E402
                          OneLineErrorParser, add_bool_flag, user_path)

def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description=__doc__)
    parser.add_argument("--path", required=True, type=user_path,
                        help="run folder or checkpoint of the base classifier")
    parser.add_argument("--which", choices=["last", "best"], default="last", help="checkpoint of a run folder")
    parser.add_argument("--pool", required=True, type=user_path,
                        help="leftover | svhn_extra | PICKLE | FOLDER | LIST")
    parser.add_argument("--pool_root", default=None, type=user_path,
                        help="SVHN .mat folder, or the root of a list's paths")
    parser.add_output_argument("--out", required=True, help="pseudo-label file to write (.npz)")
    parser.add_argument("--threshold", type=PROBABILITY, default=None,
                        help="keep predictions with confidence >= T only (default: keep all, as the paper)")
    parser.add_argument("--data_root", "--data", dest="data_root", default=None, type=user_path,
                        help="override the run's data folder (leftover pool)")
    add_bool_flag(parser, "--download", default=False, help="download missing SVHN files")
    parser.add_argument("--gpu", default=None, help=GPU_HELP)
    parser.add_argument("-b", "--batch_size", "--batch-size", dest="batch_size", type=POSITIVE_INT, default=256,
                        help="images per batch")
    parser.add_argument("--workers", "-j", type=NON_NEGATIVE_INT, default=4, help="DataLoader worker processes")
    parser.add_argument("--amp", default="auto", choices=AMP_CHOICES, help="precision of the forward passes")
    add_trust_argument(parser)
    return parser


def open_pool(spec: str, payload, args):
    """The Pool that --pool names, in memory for CIFAR-style runs."""
    from datasets import semi

    info = payload["dataset"]
    if spec == "leftover":
        from datasets.rebuild import evaluation_set

        data, _ = evaluation_set(payload, args.data_root, "test")
        pool = semi.leftover_pool(data)
    elif spec == "svhn_extra":
        pool = semi.svhn_extra_pool(args.pool_root or args.data_root or info["options"]["data_root"], args.download)
    elif os.path.isdir(spec):
        pool = semi.image_folder_pool(spec)
    elif not os.path.isfile(spec):
        raise ConfigError(f"--pool {spec}: no such file or folder (or use leftover / svhn_extra)")
    elif spec.endswith((".pickle", ".pkl")):
        pool = semi.ti_pickle_pool(spec)
    else:
        pool = semi.image_list_pool(spec, args.pool_root)
    if info["style"] == "cifar":
        pool = semi.decode_pool(pool, info["image_size"])
    return pool


def predict_pool(method, pool, info, args):
    """(pseudo labels, confidences) as NumPy arrays, one per pool image, in pool order."""
    import torch

    from datasets.augment import build_transform
    from datasets.loaders import build_eval_loader
    from utils import dist
    from utils.engine import DeviceInputs, collect_logits
    from utils.metrics import predicted_class

    ctx = dist.setup_devices(args.gpu)
    network = method.classifier().to(ctx.device).eval()
    transform = None if pool.images is not None else build_transform("test", info["style"], info["image_size"])
    loader = build_eval_loader(pool.source(), transform, args.batch_size, workers=args.workers,
                               rank=ctx.rank, world_size=ctx.world_size)  # collect_logits gathers the shards
    inputs = DeviceInputs(info["mean"], info["std"], ctx.device)
    with torch.no_grad():
        logits, _ = collect_logits(network, loader, inputs, ctx, args.amp)
    # The label is the class every reported accuracy predicts (ties to the lower index); the
    # confidence is the probability the loss trained (LDAM: softmax of s * cosine, not of cosine).
    labels = predicted_class(logits)
    probabilities = (logits.float() * method.logit_scale).softmax(dim=1)
    confidences = probabilities.gather(1, labels[:, None]).squeeze(1)
    return labels.numpy(), confidences.numpy()


def check_run_finished(folder: str, payload) -> None:
    """A run folder stands for its finished result, as with --pretrained_model: a base run that
    stopped early (a time limit, a failure) would otherwise label the pool with a half-trained
    classifier without a word, and every later step would train on those labels."""
    import json

    from utils.checkpoint import CheckpointError
    from utils.pretrained import training_progress

    progress = training_progress(payload)
    if progress is None:
        return
    try:
        with open(os.path.join(folder, "results.json"), encoding="utf-8") as stream:
            reported = json.load(stream)["last"]["epoch"]
    except (OSError, ValueError, KeyError, TypeError):
        reported = None
    if not isinstance(reported, int) or reported < progress[1]:
        raise CheckpointError(f"--path {folder}: that run has not finished its {progress[1]} epochs (its "
                              "results.json does not report them); finish it first (re-run its command with "
                              f"--resume auto), or pass the file {payload['path']} to label with it on purpose")


def main(args: argparse.Namespace) -> None:
    from datasets import semi
    from methods import rebuild
    from utils.checkpoint import CheckpointError, is_self_supervised, load_checkpoint

    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold must lie in [0, 1], got {args.threshold}")
    if not args.out.endswith(".npz"):
        # The file is a NumPy archive (it cannot carry code, unlike the pickles of earlier versions).
        raise ConfigError(f"--out {args.out}: pseudo-label files are .npz archives; name it "
                          f"{os.path.splitext(args.out)[0]}.npz")
    payload = load_checkpoint(args.path, prefer=f"{args.which}.pth", trust=args.trust_checkpoint,
                              exact=True)
    if os.path.isdir(args.path):
        check_run_finished(args.path, payload)
    if is_self_supervised(payload):  # no classifier of the dataset's classes worth trusting for labels
        raise CheckpointError(f"{payload['path']} is a {payload['method']} pre-training run; pseudo-label with a "
                              "classifier trained on the labelled set (e.g. --method ce)")
    info = payload["dataset"]
    method = rebuild(payload)
    pool = open_pool(args.pool, payload, args)
    print(f"pool {pool.name}: {len(pool)} images; predicting with {payload['path']} (epoch {payload['epoch']})")
    labels, confidences = predict_pool(method, pool, info, args)
    entry = semi.save_pseudo_labels(args.out, pool, labels, confidences, num_classes=info["num_classes"],
                                    dataset=info["name"], prediction_model=os.path.abspath(payload["path"]),
                                    threshold=args.threshold, force=args.force)
    kept = len(entry["pseudo_labels"])
    histogram = np.bincount(entry["pseudo_labels"], minlength=info["num_classes"]).tolist()
    agreement = ""
    if entry["reference_labels"] is not None and kept:
        agreement = (f"; agreement with the reference labels {100.0 * np.mean(entry['pseudo_labels'] == entry['reference_labels']):.2f}%")
    print(f"wrote {args.out}: {kept} of {len(pool)} images"
          + (f" (confidence >= {args.threshold:g})" if args.threshold is not None else "")
          + f"; pseudo labels per class {histogram}{agreement}")


if __name__ == "__main__":
    from utils.cli import run_guarded

    arguments = get_args_parser().parse_args()
    sys.exit(run_guarded("gen_pseudolabels.py", lambda: main(arguments)))
