"""What ``scripts/device_check.sh`` needs on an air-gapped GPU machine, carried inside the repository.

    python scripts/device_bundle.py prepare --source /path/to/cifar10-jpeg     # here, once
    python scripts/device_bundle.py install --target .device_cache/site        # there (the check does it)
    python scripts/device_bundle.py unpack --data_root .device_cache/data      # there (the check does it)
    python scripts/device_bundle.py summary OUT_DIR                            # there (the check does it)

``prepare`` writes the git-ignored folder ``.device/``:

* ``wheels/``: pure-Python wheels of the packages the toolkit and its tests need besides torch,
  torchvision, numpy and pillow (tensorboardX and protobuf, tqdm, pytest and its dependencies),
  downloaded with pip for Python 3.12 (``--wheels_from DIR`` copies them from a folder instead);
* ``cifar10_lt_r100.npz``: CIFAR-10-LT at ratio 100 as the fair-comparison protocol cuts it
  (``--imb_factor 0.01 --imb_type exp --lt_selection shuffle --lt_seed 0 --val_per_class 20``):
  the images of the long-tailed training set and of the validation split (12,586: the head class has no image left for validation), the 10,000
  test images, and the labels of all 50,000 training images. ``--source`` is a CIFAR-10 JPEG
  folder (``train.txt`` in the original order; its files are stored byte for byte) or a folder
  holding ``cifar-10-batches-py`` (pixels stored as lossless WebP).

``unpack`` rebuilds ``cifar-10-batches-py`` from it, with a black placeholder at every training
position the selection does not use, so ``--dataset cifar10`` with the same flags selects exactly
the stored images through the toolkit's own recipe; it then checks that no placeholder was
selected. ``install`` puts the wheels of packages that are missing into a folder for PYTHONPATH
(``pip install --no-index``; by unzipping where pip is missing). ``summary`` collects the check's
results into ``summary.txt`` and ``summary.json``.

Only the standard library, numpy and pillow are imported at the top, so ``install`` runs before
anything else is present.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import zipfile
from typing import Dict, List, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE = os.path.join(ROOT, ".device")
DATA_FILE = "cifar10_lt_r100.npz"
# The fair-comparison protocol's data flags (scripts/fair_comparison_cifar.sh).
PROTOCOL = {"imb_factor": 0.01, "imb_type": "exp", "lt_selection": "shuffle", "lt_seed": 0, "val_per_class": 20}
# Importable module -> distribution, for what the toolkit and its tests import besides torch,
# torchvision, numpy and pillow (torchvision depends on those two). All are pure Python.
PACKAGES = {"tensorboardX": "tensorboardX>=2.6", "google.protobuf": "protobuf>=3.20", "packaging": "packaging",
            "tqdm": "tqdm>=4.60", "pytest": "pytest>=7.0", "pluggy": "pluggy", "iniconfig": "iniconfig",
            "pygments": "pygments", "xdist": "pytest-xdist>=3.0", "execnet": "execnet"}
REPOSITORY_LIMIT_MB = 60.0
TRAIN_IMAGES, TEST_IMAGES, NUM_CLASSES = 50000, 10000, 10


class BundleError(Exception):
    """A wrong input or a missing piece; the message names it and the fix."""


# ---- prepare (on a machine with the data and a package registry) --------------------------------
def read_jpeg_folder(source: str) -> Tuple[List[int], List[bytes], List[int], List[bytes], List[str]]:
    """Labels and file bytes of train.txt (original order) and test.txt, and the class names."""
    def split(name: str) -> Tuple[List[int], List[bytes]]:
        path = os.path.join(source, f"{name}.txt")
        labels, blobs = [], []
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                if not line.strip():
                    continue
                relative, label = line.split()
                with open(os.path.join(source, relative), "rb") as image:
                    blobs.append(image.read())
                labels.append(int(label))
        return labels, blobs

    train_labels, train_blobs = split("train")
    test_labels, test_blobs = split("test")
    with open(os.path.join(source, "classes.txt"), encoding="utf-8") as lines:
        names = [line.strip() for line in lines if line.strip()]
    return train_labels, train_blobs, test_labels, test_blobs, names


def read_pickles(folder: str):
    """Labels and uint8 images (N x 32 x 32 x 3) of the standard pickles, and the class names."""
    import numpy as np

    sys.path.insert(0, ROOT)
    from datasets.cifar_lt import UnsafePickleError, read_array_pickle

    def load(name: str) -> dict:
        path = os.path.join(folder, name)
        try:  # arrays and plain data only: a pickle that names anything else is refused, not run
            entry = read_array_pickle(path, encoding="latin1")
        except OSError:
            raise
        except UnsafePickleError as error:
            raise BundleError(f"--source: {path} names '{error}', which no CIFAR pickle holds "
                              "(unpickling it could run code); use the official files") from None
        except Exception as error:  # damaged bytes surface as many exception types
            raise BundleError(f"--source: {path} is damaged ({type(error).__name__})") from None
        if not isinstance(entry, dict):
            raise BundleError(f"--source: {path} holds a {type(entry).__name__}, not a CIFAR batch")
        return entry

    def images(entries: Sequence[dict]):
        rows = np.concatenate([np.asarray(e["data"], dtype=np.uint8) for e in entries])
        return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # channel planes -> H x W x 3

    train = [load(f"data_batch_{i}") for i in range(1, 6)]
    test = [load("test_batch")]
    train_labels = [int(y) for e in train for y in e["labels"]]
    test_labels = [int(y) for e in test for y in e["labels"]]
    return train_labels, images(train), test_labels, images(test), list(load("batches.meta")["label_names"])


def lossless_webp(image) -> bytes:
    from PIL import Image

    stream = io.BytesIO()
    Image.fromarray(image).save(stream, format="WEBP", lossless=True, quality=100, method=6)
    return stream.getvalue()


def selected_positions(train_labels: Sequence[int]):
    """Training positions the protocol uses: the long-tailed subset and the validation split,
    computed with the toolkit's own recipe functions (those ``--dataset cifar10`` calls)."""
    import numpy as np

    sys.path.insert(0, ROOT)
    from datasets.longtail import balanced_validation_indices, class_counts, select_indices

    targets = np.asarray(train_labels, dtype=np.int64)
    counts = class_counts(len(targets) // NUM_CLASSES, NUM_CLASSES, PROTOCOL["imb_type"], PROTOCOL["imb_factor"])
    selected = select_indices(targets, counts, PROTOCOL["lt_selection"], PROTOCOL["lt_seed"])
    val = balanced_validation_indices(targets, selected, PROTOCOL["val_per_class"], PROTOCOL["lt_seed"])
    return np.sort(np.concatenate([selected, val])), counts


def pack_blobs(blobs: Sequence[bytes]):
    """One uint8 array of concatenated byte strings and the N + 1 offsets that cut it."""
    import numpy as np

    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets


def download_wheels(folder: str, wheels_from: str | None) -> List[str]:
    os.makedirs(folder, exist_ok=True)
    if wheels_from:
        for name in os.listdir(wheels_from):
            if name.endswith(".whl"):
                shutil.copy2(os.path.join(wheels_from, name), folder)
    else:
        # Pure-Python wheels for the GPU machine's interpreter, whatever this one is.
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--python-version", "3.12", "--implementation", "py", "--abi", "none", "--platform", "any",
                   "-d", folder, *PACKAGES.values()]
        if subprocess.run(command).returncode != 0:
            raise BundleError("pip download of the wheels failed; pass --wheels_from DIR with the .whl files of "
                              + ", ".join(PACKAGES.values()))
    wheels = sorted(n for n in os.listdir(folder) if n.endswith(".whl"))
    missing = [spec for spec in PACKAGES.values() if not any(
        wheel_of(spec.split(">")[0], w) for w in wheels)]
    if missing:
        raise BundleError(f"{folder} lacks wheels for {', '.join(missing)}")
    return wheels


def wheel_of(distribution: str, wheel: str) -> bool:
    """Whether a wheel file is the distribution's: wheel names spell '-' and '.' as '_'
    (pytest-xdist -> pytest_xdist-3.8.0-py3-none-any.whl)."""
    return re.sub(r"[-_.]+", "_", wheel.split("-")[0]).lower() == re.sub(r"[-_.]+", "_", distribution).lower()


def folder_bytes(path: str) -> int:
    total = 0
    for parent, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(parent, f)) for f in files
                     if not os.path.islink(os.path.join(parent, f)))
    return total


def prepare(args: argparse.Namespace) -> None:
    import numpy as np

    source = args.source
    if os.path.isfile(os.path.join(source, "train.txt")):
        kind = "jpeg"
        train_labels, train_blobs, test_labels, test_blobs, names = read_jpeg_folder(source)
    else:
        folder = source if os.path.isfile(os.path.join(source, "data_batch_1")) else \
            os.path.join(source, "cifar-10-batches-py")
        if not os.path.isfile(os.path.join(folder, "data_batch_1")):
            raise BundleError(f"--source {source}: neither a CIFAR-10 JPEG folder (train.txt, test.txt, "
                              "classes.txt) nor a folder with cifar-10-batches-py")
        kind = "webp"
        train_labels, train_images, test_labels, test_images, names = read_pickles(folder)
    if len(train_labels) != TRAIN_IMAGES or len(test_labels) != TEST_IMAGES or len(names) != NUM_CLASSES:
        raise BundleError(f"--source {source}: expected CIFAR-10 ({TRAIN_IMAGES} training and {TEST_IMAGES} test "
                          f"images, {NUM_CLASSES} classes), got {len(train_labels)}, {len(test_labels)}, {len(names)}")
    kept, counts = selected_positions(train_labels)
    if kind == "jpeg":
        kept_blobs = [train_blobs[i] for i in kept]
    else:
        kept_blobs = [lossless_webp(train_images[i]) for i in kept]
        test_blobs = [lossless_webp(image) for image in test_images]
    os.makedirs(args.out, exist_ok=True)
    wheels = [] if args.no_wheels else download_wheels(os.path.join(args.out, "wheels"), args.wheels_from)
    kept_bytes, kept_offsets = pack_blobs(kept_blobs)
    test_bytes, test_offsets = pack_blobs(test_blobs)
    manifest = {"protocol": PROTOCOL, "train_counts": list(counts), "stored_train_images": int(len(kept)),
                "test_images": len(test_blobs), "encoding": kind, "source": os.path.basename(os.path.normpath(source))}
    path = os.path.join(args.out, DATA_FILE)
    np.savez(path + ".tmp.npz", train_labels=np.asarray(train_labels, dtype=np.int64), kept=kept.astype(np.int64),
             kept_bytes=kept_bytes, kept_offsets=kept_offsets, test_labels=np.asarray(test_labels, dtype=np.int64),
             test_bytes=test_bytes, test_offsets=test_offsets, label_names=np.asarray(names),
             manifest=np.asarray(json.dumps(manifest)))
    os.replace(path + ".tmp.npz", path)
    size_mb = folder_bytes(ROOT) / 2 ** 20
    print(f"wrote {path} ({os.path.getsize(path) / 2 ** 20:.1f} MB: {len(kept)} training + validation images, "
          f"{len(test_blobs)} test images, {kind}) and {len(wheels)} wheels; the repository folder is now "
          f"{size_mb:.1f} MB")
    if size_mb > REPOSITORY_LIMIT_MB:
        raise BundleError(f"the repository folder is {size_mb:.1f} MB, over {REPOSITORY_LIMIT_MB:g} MB: remove run "
                          "folders from it, or prepare from the JPEG folder (smaller than lossless WebP)")


# ---- install / unpack (on the GPU machine) ------------------------------------------------------
def missing_modules() -> List[str]:
    missing = []
    for module in PACKAGES:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a missing parent package (google for google.protobuf)
            found = False
        if not found:
            missing.append(module)
    return missing


def install(args: argparse.Namespace) -> None:
    for module in ("numpy", "PIL", "torch", "torchvision"):
        if importlib.util.find_spec(module) is None:
            raise BundleError(f"{module} is not installed for {sys.executable}: the check uses the machine's own "
                              "torch, torchvision, numpy and pillow")
    missing = missing_modules()
    if not missing:
        print("every package the check needs is installed")
        return
    wheels_dir = os.path.join(args.bundle, "wheels")
    wheels = sorted(n for n in os.listdir(wheels_dir) if n.endswith(".whl")) if os.path.isdir(wheels_dir) else []
    wanted = [PACKAGES[m].split(">")[0] for m in missing]
    chosen = []
    for distribution in wanted:
        match = [w for w in wheels if wheel_of(distribution, w)]
        if not match:
            raise BundleError(f"{distribution} is missing and {wheels_dir} has no wheel for it: run "
                              "'python scripts/device_bundle.py prepare --source DIR' on a machine with pip access")
        chosen.append(match[-1])
    os.makedirs(args.target, exist_ok=True)
    has_pip = importlib.util.find_spec("pip") is not None
    if has_pip:
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--find-links",
                   wheels_dir, "--target", args.target, "--upgrade", *wanted]
        if subprocess.run(command).returncode != 0:
            raise BundleError(f"pip could not install {', '.join(wanted)} from {wheels_dir}")
    else:  # a pure-Python wheel is a zip of importable folders
        for wheel in chosen:
            with zipfile.ZipFile(os.path.join(wheels_dir, wheel)) as archive:
                archive.extractall(args.target)
    print(f"installed into {args.target} ({'pip' if has_pip else 'unzipped'}): {', '.join(chosen)}")


def unpack_blobs(data, offsets):
    """Decoded uint8 images (N x 32 x 32 x 3), as the toolkit decodes image files (PIL, RGB)."""
    import numpy as np
    from PIL import Image

    raw = data.tobytes()
    out = np.empty((len(offsets) - 1, 32, 32, 3), dtype=np.uint8)
    for i in range(len(offsets) - 1):
        out[i] = np.asarray(Image.open(io.BytesIO(raw[offsets[i]:offsets[i + 1]])).convert("RGB"))
    return out


def dump_batch(path: str, images, labels) -> None:
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # H x W x 3 -> channel planes
    with open(path, "wb") as stream:
        pickle.dump({"data": rows, "labels": [int(y) for y in labels]}, stream, protocol=4)


def unpack(args: argparse.Namespace) -> None:
    import numpy as np

    path = os.path.join(args.bundle, DATA_FILE)
    if not os.path.isfile(path):
        raise BundleError(f"{path} is missing: run 'python scripts/device_bundle.py prepare --source DIR' first")
    bundle = np.load(path, allow_pickle=False)
    manifest = json.loads(str(bundle["manifest"]))
    if manifest["protocol"] != PROTOCOL:
        raise BundleError(f"{path} holds the images of {manifest['protocol']}, not of {PROTOCOL}: prepare it again")
    folder = os.path.join(args.data_root, "cifar-10-batches-py")
    stamp = os.path.join(folder, "bundle.json")
    if os.path.isfile(stamp):
        with open(stamp, encoding="utf-8") as stream:
            if json.load(stream) == manifest:
                print(f"{folder} is already unpacked")
                return
    elif any(os.path.exists(os.path.join(folder, name)) for name in ("data_batch_1", "test_batch", "batches.meta")):
        # CIFAR-10 files this script did not write (the real ones, say): the bundle's subset, with
        # black images where nothing was selected, must not replace them.
        raise BundleError(f"{folder} already holds CIFAR-10 files that no bundle wrote: unpack into another "
                          "--data_root (an empty folder)")
    os.makedirs(folder, exist_ok=True)
    with open(stamp, "w", encoding="utf-8") as stream:  # from here on the files are this script's
        json.dump({"unpacking": True}, stream)
    train = np.zeros((TRAIN_IMAGES, 32, 32, 3), dtype=np.uint8)  # black where nothing is selected
    train[bundle["kept"]] = unpack_blobs(bundle["kept_bytes"], bundle["kept_offsets"])
    labels = bundle["train_labels"]
    for b in range(5):
        part = slice(b * TRAIN_IMAGES // 5, (b + 1) * TRAIN_IMAGES // 5)
        dump_batch(os.path.join(folder, f"data_batch_{b + 1}"), train[part], labels[part])
    dump_batch(os.path.join(folder, "test_batch"), unpack_blobs(bundle["test_bytes"], bundle["test_offsets"]),
               bundle["test_labels"])
    with open(os.path.join(folder, "batches.meta"), "wb") as stream:
        pickle.dump({"label_names": [str(n) for n in bundle["label_names"]], "num_vis": 3072}, stream, protocol=4)
    check_selection(args.data_root, manifest)
    with open(stamp, "w", encoding="utf-8") as stream:
        json.dump(manifest, stream)
    print(f"wrote {folder}: {manifest['stored_train_images']} of {TRAIN_IMAGES} training images and "
          f"{manifest['test_images']} test images")


def check_selection(data_root: str, manifest: Dict) -> None:
    """``--dataset cifar10`` with the protocol's flags must select only stored images."""
    sys.path.insert(0, ROOT)
    from datasets import DataOptions, build_dataset

    data = build_dataset("cifar10", DataOptions(data_root=data_root, download=False, **PROTOCOL))
    for name, source in (("training", data.train), ("validation", data.val)):
        blank = int((source.array.reshape(len(source), -1).max(axis=1) == 0).sum())
        if blank:
            raise BundleError(f"{blank} {name} images of the unpacked data are placeholders: the bundle was "
                              "made with another selection; prepare it again")
    if list(data.train_counts) != manifest["train_counts"]:
        raise BundleError(f"class counts {data.train_counts} differ from the bundle's {manifest['train_counts']}")


# ---- summary ------------------------------------------------------------------------------------
def test_counts(out_dir: str) -> Dict[str, int]:
    """passed / failed / skipped / errors of the CUDA tests, from the JUnit file or the -rA log."""
    import xml.etree.ElementTree as ElementTree

    junit = os.path.join(out_dir, "cuda_tests.xml")
    if os.path.isfile(junit):
        suite = ElementTree.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        total, failed, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
        return {"passed": total - failed - errors - skipped, "failed": failed, "errors": errors,
                "skipped": skipped, "finished": 1}
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "finished": 0}
    log = os.path.join(out_dir, "cuda_tests.log")
    if os.path.isfile(log):
        with open(log, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                for word, key in (("PASSED", "passed"), ("FAILED", "failed"), ("ERROR", "errors"),
                                  ("SKIPPED", "skipped")):
                    if line.startswith(word + " "):
                        counts[key] += 1
    return counts


def read_steps(out_dir: str) -> List[Dict]:
    """(name, exit status, seconds) of every step device_check.sh ran, from steps.tsv."""
    path = os.path.join(out_dir, "steps.tsv")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as lines:
        rows = [line.rstrip("\n").split("\t") for line in lines if line.strip()]
    return [{"step": name, "status": int(rc), "seconds": int(seconds)} for name, rc, seconds in rows]


def parity_summary(out_dir: str) -> Dict[str, Dict]:
    """The eager and compiled parity runs' last top-1 and training time, where they finished."""
    found = {}
    for name in ("eager", "compiled"):
        folder = os.path.join(out_dir, f"parity_{name}")
        if not os.path.isfile(os.path.join(folder, "results.json")):
            continue
        with open(os.path.join(folder, "results.json"), encoding="utf-8") as stream:
            results = json.load(stream)
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as stream:
            run = json.load(stream).get("run", {})
        found[name] = {"top1_last": results["last"]["top1"], "epochs": results["last"].get("epoch"),
                       "train_time_s": results.get("train_time_s") or 0.0,
                       "compile_mode": run.get("compile_mode") if run.get("compile") else None}
    return found


def summary(args: argparse.Namespace) -> None:
    out = args.out_dir
    steps = read_steps(out)
    result: Dict = {"mode": args.mode, "elapsed_s": args.elapsed_s, "steps": steps}
    lines = [f"device check ({args.mode}), {args.elapsed_s} s: " + ", ".join(
        f"{s['step']} {s['seconds']} s" + ("" if s["status"] == 0 else
                                           f" (status {s['status']}{', time limit' if s['status'] in (124, 137) else ''})")
        for s in steps)]
    tests = test_counts(out)
    result["cuda_tests"] = tests
    state = "" if tests["finished"] else " (no JUnit file: stopped by its time limit or not run; counted from the log)"
    lines.append(f"CUDA tests: {tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, "
                 f"{tests['skipped']} skipped{state}  [cuda_tests.log]")
    for name in ("bench", "bench_compiled"):
        bench_path = os.path.join(out, f"{name}.json")
        if not os.path.isfile(bench_path):
            if name == "bench":
                lines.append("bench_throughput: no result  [bench.log]")
            continue
        with open(bench_path, encoding="utf-8") as stream:
            bench = json.load(stream)
        result[name] = bench
        compiled = f", compiled ({bench['compile_mode']})" if bench.get("compile_mode") else ""
        lines.append(f"bench_throughput ({bench['device']}, batch {bench['batch_size']}, fast path {bench['amp']}"
                     f"{compiled}; images/s, papers -> fast):")
        for method, numbers in bench["methods"].items():
            phases = "; ".join(f"{phase} {p['papers']['images_per_s']:.0f} -> {p['fast']['images_per_s']:.0f} "
                               f"({p['speedup']:.2f}x)" for phase, p in numbers["phases"].items())
            lines.append(f"  {method}: {phases}; 200 epochs {numbers['run_200_epochs_s']['fast'] / 60:.1f} min "
                         f"(papers {numbers['run_200_epochs_s']['papers'] / 60:.1f}), speedup {numbers['speedup']:.2f}")
    parity = parity_summary(out)
    if parity:
        result["compile_parity"] = parity
        lines.append("compile parity (CE, seed 0, same epochs): " + "; ".join(
            f"{name} top-1 {p['top1_last']:.2f}, {p['train_time_s']:.0f} s" + (f" ({p['compile_mode']})" if
                                                                             p.get("compile_mode") else "")
            for name, p in parity.items()) + "  [parity_*/]")
    run = os.path.join(out, "ce_run")
    results_path = os.path.join(run, "results.json")
    if os.path.isfile(results_path):
        with open(results_path, encoding="utf-8") as stream:
            results = json.load(stream)
        epochs = results["last"].get("epoch")
        selected = results.get("best_on_val", {})
        result["ce_run"] = {"epochs": epochs, "wall_time_s": results.get("wall_time_s"),
                            "train_time_s": results.get("train_time_s"), "top1_last": results["last"]["top1"],
                            "top1_selected_on_val": selected.get("top1"), "hardware": results.get("hardware"),
                            "dataset": results.get("dataset")}
        lines.append(f"CE, {results.get('dataset')}, ResNet-32, {epochs} epochs on {results.get('hardware')}: "
                     f"wall time {results.get('wall_time_s', 0):.0f} s (training and evaluation "
                     f"{results.get('train_time_s') or 0:.0f} s), test top-1 {results['last']['top1']:.2f} last"
                     + (f", {selected['top1']:.2f} selected on val (epoch {selected['epoch']})" if selected else "")
                     + "  [ce_run/]")
    else:
        done = 0
        log = os.path.join(run, "log.txt")
        if os.path.isfile(log):
            with open(log, encoding="utf-8", errors="replace") as stream:
                done = sum(1 for line in stream if " epoch " in f" {line}" and ": lr=" in line)
        result["ce_run"] = {"finished": False, "epochs_done": done}
        lines.append(f"CE run: not finished ({done} epochs logged before it stopped)  [ce_run.log]")
    text = "\n".join(lines)
    with open(os.path.join(out, "summary.txt"), "w", encoding="utf-8") as stream:
        stream.write(text + "\n")
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as stream:
        json.dump(result, stream, indent=2)
    print(text)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("prepare", help="write the bundle (here: data and a package registry needed)")
    make.add_argument("--source", required=True,
                      help="CIFAR-10 JPEG folder (train.txt, test.txt, classes.txt) or a folder with cifar-10-batches-py")
    make.add_argument("--out", default=BUNDLE, help="bundle folder (default: .device in the repository)")
    make.add_argument("--wheels_from", default=None, help="copy the .whl files from this folder instead of pip")
    make.add_argument("--no_wheels", action="store_true", help="data only")
    put = commands.add_parser("install", help="install the missing packages from the bundle's wheels")
    put.add_argument("--bundle", default=BUNDLE)
    put.add_argument("--target", required=True, help="folder to install into (put it on PYTHONPATH)")
    data = commands.add_parser("unpack", help="write cifar-10-batches-py from the bundle")
    data.add_argument("--bundle", default=BUNDLE)
    data.add_argument("--data_root", required=True, help="the --data_root of the training command")
    report = commands.add_parser("summary", help="collect a device check's results")
    report.add_argument("out_dir")
    report.add_argument("--mode", default="full", choices=["full", "smoke"])
    report.add_argument("--elapsed_s", type=int, default=0, help="the whole check's wall time")
    return parser


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        {"prepare": prepare, "install": install, "unpack": unpack, "summary": summary}[args.command](args)
    except (BundleError, OSError) as error:
        print(f"device_bundle.py {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
