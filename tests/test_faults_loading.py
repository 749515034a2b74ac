"""Fault injection for everything the toolkit reads or writes as a file: crafted pickles and
checkpoints must not run code, damaged CIFAR pickles are named as damaged, the toolkit's own and
foreign checkpoints load without --trust_checkpoint, and a failed checkpoint write keeps the
previous checkpoint."""
import errno
import importlib.util
import os
import pickle
import random
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from datasets import DataOptions, DatasetError, build_dataset, semi
from datasets.cifar_lt import CIFAR10, _read_batches
from models import build_model
from utils.checkpoint import (CheckpointError, UnsafeCheckpointError, build_payload, capture_rng_state,
                              is_temporary_checkpoint, load_checkpoint, read_torch_file, restore_rng_state,
                              save_atomic)
from utils.cli import run_guarded
from utils.pretrained import read_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Planted:
    """Unpickling this runs ``touch MARKER``: what a hostile file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def one_line_exit_2(result, *fragments):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def run_script(*argv):
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)


def tiny_payload(epoch=1):
    model = build_model("resnet32", 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()  # momentum buffers in the optimiser state
    return build_payload(method_name="ce", method_kwargs={}, model_kwargs={"arch": "resnet32", "num_classes": 10},
                         dataset={"name": "cifar10", "train_counts": [5] * 10}, config={"optim": {"epochs": 3}},
                         state_dict={f"model.{k}": v for k, v in model.state_dict().items()}, epoch=epoch,
                         optimizer=optimizer.state_dict(), records={"best_on_test": {"top1": 12.5, "epoch": 1}},
                         rng=capture_rng_state())


def draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


# ---- the toolkit's own checkpoints --------------------------------------------------------------
def test_own_checkpoint_round_trips_with_plain_weights_only(tmp_path):
    path = str(tmp_path / "last.pth")
    save_atomic(tiny_payload(), path)
    expected = draws()
    # Plain torch.load with weights_only=True, no allow-list: the format itself is safe to load.
    payload = torch.load(path, weights_only=True)
    assert payload["epoch"] == 1 and payload["records"]["best_on_test"]["top1"] == 12.5
    assert isinstance(payload["rng"]["numpy"]["state"]["key"], list)
    restore_rng_state(payload["rng"])
    assert draws() == expected  # Python, NumPy and torch streams continue exactly
    assert load_checkpoint(path)["path"] == path


@pytest.mark.parametrize("method, recorded", [("ce", "erm"), ("ldam_drw", "erm"), ("bccl", "bccl"), ("moco", "moco")])
def test_real_run_checkpoints_need_no_allow_list(cifar10_root, tmp_path, method, recorded):
    """What a run writes (config, records, optimiser, scaler, method buffers, RNG) is plain."""
    import main as main_script
    from utils.runner import run_training

    run = tmp_path / "run"
    args = main_script.get_args_parser().parse_args([
        "--dataset", "cifar10", "--data_root", cifar10_root.root, "--imb_factor", "0.1", "--method", method,
        "--epochs", "1", "--limit_batches", "1", "-b", "16", "--workers", "0", "--progress", "False",
        "--download", "False", "--out_dir", str(run)])
    run_training(*main_script.build_config(args))
    for name in ("last.pth", "best.pth"):
        payload = torch.load(str(run / name), weights_only=True)  # no NumPy allow-list either
        assert payload["method"] == recorded and payload["epoch"] == 1


@pytest.mark.parametrize("change, message", [
    ({"state_dict": None}, "its 'state_dict' is None (NoneType), not a dict"),
    ({"config": [1, 2]}, "its 'config' is [1, 2] (list), not a dict"),
    ({"epoch": "x"}, "its 'epoch' is 'x' (str), not a count"),
    ({"epoch": -1}, "its 'epoch' is -1 (int), not a count"),
    ({"version": "2"}, "its format version is '2', not a number"),
], ids=["state_dict", "config", "epoch-str", "epoch-negative", "version"])
def test_a_checkpoint_with_a_damaged_field_is_named_as_damaged(tmp_path, change, message):
    path = str(tmp_path / "last.pth")
    save_atomic({**tiny_payload(), **change}, path)
    with pytest.raises(CheckpointError, match="damaged ltkit checkpoint") as caught:
        load_checkpoint(path)
    assert message in str(caught.value) and path in str(caught.value)
    payload = tiny_payload()
    del payload["dataset"]
    save_atomic(payload, path)
    with pytest.raises(CheckpointError, match="its 'dataset' is missing, not a dict"):
        load_checkpoint(path)


def test_a_damaged_header_given_as_pretrained_weights_is_one_error(tmp_path):
    # As --pretrained_model: a config that is not a dict reads as "no parent run, no progress",
    # and a header without a state dict is named, not a KeyError from deep inside.
    from utils.pretrained import is_self_supervised_start, training_progress

    path = str(tmp_path / "damaged.pth")
    payload = {**tiny_payload(), "config": [1]}
    save_atomic(payload, path)
    assert training_progress(payload) is None and is_self_supervised_start(path) is False
    tensors, _, progress = read_weights(path)
    assert tensors and progress is None
    del payload["state_dict"]
    save_atomic(payload, path)
    with pytest.raises(CheckpointError, match=r"--pretrained_model .*damaged.pth: no state dict inside \(NoneType\)"):
        read_weights(path)


def test_a_pseudo_label_file_claiming_an_absurd_shape_is_named(tmp_path):
    path = tmp_path / "bomb.npz"
    header = "{'descr': '<i8', 'fortran_order': False, 'shape': (100000000000000,), }"
    npy = b"\x93NUMPY\x01\x00" + len(header + " " * (118 - len(header)) + "\n").to_bytes(2, "little")
    npy += (header + " " * (118 - len(header)) + "\n").encode()
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("pseudo_labels.npy", npy)
        archive.writestr("meta.npy", b"")
    with pytest.raises(DatasetError, match="bomb.npz is damaged or not a pseudo-label file"):
        semi.load_pseudo_labels(str(path))


@pytest.mark.parametrize("change, message", [
    ({"method": "nosuch"}, "cannot rebuild the recorded method 'nosuch' (KeyError: unknown method 'nosuch'"),
    ({"method_kwargs": {"bogus": 1}}, "unexpected keyword argument 'bogus'"),
    ({"model_kwargs": {"arch": "nosuch", "num_classes": 10}}, "unknown model 'nosuch'"),
    ({"model_kwargs": {"arch": "resnet32", "num_classes": 100}}, "size mismatch for model.head.weight"),
], ids=["method", "option", "arch", "weights"])
def test_a_checkpoint_this_version_cannot_rebuild_is_one_line(tmp_path, change, message):
    from methods import build_method, rebuild

    method = build_method("erm", build_model("resnet32", 10), [5] * 10)
    payload = {**tiny_payload(), "method": "erm", "state_dict": method.state_dict(), **change}
    path = str(tmp_path / "best.pth")
    save_atomic(payload, path)
    with pytest.raises(CheckpointError) as caught:
        rebuild(load_checkpoint(path))
    assert message in str(caught.value) and path in str(caught.value) and "\n" not in str(caught.value)


def test_a_checkpoint_of_an_unknown_dataset_is_named(tmp_path):
    from datasets.rebuild import evaluation_set

    path = str(tmp_path / "best.pth")
    save_atomic({**tiny_payload(), "dataset": {"name": "nosuch", "train_counts": [5] * 10, "options": {}}}, path)
    with pytest.raises(DatasetError, match="records the dataset 'nosuch', which this version of ltkit does not know"):
        evaluation_set(load_checkpoint(path), None, "test")


def test_checkpoint_of_earlier_versions_with_numpy_rng_state_still_loads(tmp_path):
    path = str(tmp_path / "last.pth")
    payload = tiny_payload()
    payload["rng"] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    assert isinstance(payload["rng"]["numpy"][1], np.ndarray)  # the layout earlier versions wrote
    torch.save(payload, path)
    expected = draws()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # without the NumPy allow-list it would be refused
    payload = load_checkpoint(path)
    restore_rng_state(payload["rng"])
    assert draws() == expected


# ---- foreign checkpoints (--pretrained_model) ---------------------------------------------------
def foreign_state():
    return {f"module.{k}": v for k, v in build_model("resnet32", 10).state_dict().items()}


def sgd_state(params):
    optimizer = torch.optim.SGD(params, lr=0.03, momentum=0.9, weight_decay=1e-4)
    return optimizer.state_dict()


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("best_acc1", ["tensor", "float64", "float32"])
def test_papers_pth_tar_loads_without_trust(tmp_path, best_acc1, legacy):
    """LDAM-DRW / BCCL / semi-self save epoch, arch, state_dict, best_acc1 and optimizer;
    best_acc1 is a tensor or a NumPy scalar; files from before torch 1.6 use the legacy format."""
    state = foreign_state()
    value = {"tensor": torch.tensor(45.25), "float64": np.float64(45.25), "float32": np.float32(45.25)}[best_acc1]
    path = str(tmp_path / "ckpt.best.pth.tar")
    torch.save({"epoch": 200, "arch": "resnet32", "state_dict": state, "best_acc1": value,
                "optimizer": sgd_state([torch.nn.Parameter(torch.zeros(3))])}, path,
               _use_new_zipfile_serialization=not legacy)
    payload = read_torch_file(path, "--pretrained_model")
    assert float(payload["best_acc1"]) == 45.25 and payload["arch"] == "resnet32"
    tensors, kind, _ = read_weights(path)
    assert kind == "checkpoint with a state_dict" and set(tensors) == set(state)


def test_numpy_1_spelling_of_scalars_loads(tmp_path):
    """A file written under NumPy 1 names numpy.core.multiarray.scalar; NumPy 2 moved it."""
    path = tmp_path / "np1.pth.tar"
    torch.save({"state_dict": {"w": torch.ones(2)}, "best_acc1": np.float64(7.5)}, str(path),
               _use_new_zipfile_serialization=False)  # protocol 2: globals are plain text
    raw = path.read_bytes()
    assert b"numpy._core.multiarray" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert float(read_torch_file(str(path))["best_acc1"]) == 7.5


def test_moco_pth_tar_loads_without_trust(tmp_path):
    state = {f"module.encoder_q.{k}": v for k, v in build_model("resnet32", 10).state_dict().items()}
    path = str(tmp_path / "checkpoint_0199.pth.tar")
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": state,
                "optimizer": sgd_state([torch.nn.Parameter(torch.zeros(3))])}, path)
    tensors, kind, _ = read_weights(path)
    assert kind == "checkpoint with a state_dict" and len(tensors) == len(state)


# ---- crafted checkpoints ------------------------------------------------------------------------
def test_planted_checkpoint_is_refused_without_running_it(tmp_path):
    marker, path = tmp_path / "marker", str(tmp_path / "last.pth")
    torch.save({"format": "ltkit-checkpoint", "epoch": Planted(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert path in message and "system" in message and "--trust_checkpoint" in message and "\n" not in message
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):
        read_weights(path)
    assert not marker.exists()
    # The opt-in really is full pickle: the file's code runs (this is what its help warns about).
    read_torch_file(path, trust=True)
    assert marker.exists()


def entry_scripts():
    """The four entries that read checkpoints, imported as modules (not run as subprocesses)."""
    import main as main_script
    import test as test_script
    import train_LCSL as lcsl_script

    spec = importlib.util.spec_from_file_location("gen_pseudolabels",
                                                  os.path.join(ROOT, "scripts", "gen_pseudolabels.py"))
    gen_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_script)
    return {"main.py": main_script, "train_LCSL.py": lcsl_script, "test.py": test_script,
            "gen_pseudolabels.py": gen_script}


def test_planted_checkpoint_at_every_entry_is_one_line_and_runs_nothing(cifar10_root, tmp_path, capsys):
    marker, path = tmp_path / "marker", str(tmp_path / "evil.pth")
    torch.save({"state_dict": {}, "x": Planted(marker)}, path)
    common = ["--dataset", "cifar10", "--data_root", cifar10_root.root, "--imb_factor", "0.1", "--epochs", "1",
              "-b", "16", "--workers", "0", "--progress", "False", "--download", "False"]
    out_dir, root_log = tmp_path / "run", tmp_path / "logs"
    scripts = entry_scripts()
    for name, argv in (("test.py", ["--path", path]),
                       ("gen_pseudolabels.py", ["--path", path, "--pool", "leftover",
                                                "--out", str(tmp_path / "p.npz")]),
                       ("main.py", [*common, "--method", "ce", "--pretrained_model", path,
                                    "--out_dir", str(out_dir)]),
                       ("main.py", [*common, "--method", "ce", "--resume", path, "--root_log", str(root_log)]),
                       # Here LCSL's default 20 validation images per class would leave some classes
                       # 10: train_LCSL.py refuses such a split before it reads the checkpoint.
                       ("train_LCSL.py", [*common, "--resume", path, "--root_log", str(root_log),
                                          "--val_per_class", "10"])):
        script = scripts[name]
        args = script.get_args_parser().parse_args(argv)
        assert run_guarded(name, lambda: script.main(args)) == 2, name
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and path in error and "--trust_checkpoint" in error, (name, error)
        assert not marker.exists(), name
        assert not out_dir.exists() and not root_log.exists(), name  # refused before a run folder is made
    # End to end once: one line on stderr, exit 2, nothing run.
    one_line_exit_2(run_script("test.py", "--path", path), path, "--trust_checkpoint")
    assert not marker.exists()
    # With the opt-in the file is unpickled (its code runs), then refused as not a checkpoint.
    args = scripts["test.py"].get_args_parser().parse_args(["--path", path, "--trust_checkpoint"])
    assert run_guarded("test.py", lambda: scripts["test.py"].main(args)) == 2
    assert "not an ltkit checkpoint" in capsys.readouterr().err and marker.exists()


@pytest.mark.parametrize("name", ["main.py", "train_LCSL.py", "test.py", "gen_pseudolabels.py"])
def test_every_checkpoint_entry_has_the_trust_flag(name):
    parser = entry_scripts()[name].get_args_parser()
    text = " ".join(parser.format_help().split())
    assert "--trust_checkpoint" in text and "EXECUTES code stored in the file" in text
    required = {"test.py": ["--path", "x"],
                "gen_pseudolabels.py": ["--path", "x", "--pool", "leftover", "--out", "x"]}
    assert parser.parse_args([*required.get(name, []), "--trust_checkpoint"]).trust_checkpoint is True
    assert parser.parse_args(required.get(name, [])).trust_checkpoint is False


# ---- checkpoint writes --------------------------------------------------------------------------
def failing_save(cause):
    """A torch.save that writes part of the file, then fails as torch does: its zip writer raises
    RuntimeError "enforce fail at inline_container.cc" with the OSError only as the context."""
    def save(obj, stream):
        stream.write(b"partial")
        try:
            raise cause
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    return save


def test_full_disk_keeps_the_previous_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    save_atomic({"format": "ltkit-checkpoint", "epoch": 1}, path)
    monkeypatch.setattr(torch, "save", failing_save(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    with pytest.raises(CheckpointError) as caught:
        save_atomic({"format": "ltkit-checkpoint", "epoch": 2}, path)
    monkeypatch.undo()
    message = str(caught.value)
    assert path in message and "disk is full" in message and "inline_container" not in message
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pth"]


def test_read_only_folder_is_named_with_its_cause(tmp_path, monkeypatch):
    # chmod does not stop root, so the failure is injected where the OS would report it.
    path = str(tmp_path / "last.pth")
    save_atomic({"format": "ltkit-checkpoint", "epoch": 1}, path)

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path))

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(CheckpointError, match="last.pth: permission denied.*read-only"):
        save_atomic({"format": "ltkit-checkpoint", "epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1 and os.listdir(tmp_path) == ["last.pth"]


def test_folder_that_is_a_file_is_named(tmp_path):
    blocker = tmp_path / "run"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match=f"{blocker}/last.pth"):
        save_atomic({"epoch": 1}, str(blocker / "last.pth"))


def test_temporary_names_are_recognised(tmp_path, monkeypatch):
    seen = []
    original = torch.save
    monkeypatch.setattr(torch, "save",
                        lambda obj, stream: (seen.extend(os.listdir(tmp_path)), original(obj, stream)))
    save_atomic({"epoch": 1}, str(tmp_path / "last.pth"))
    assert len(seen) == 1 and is_temporary_checkpoint(seen[0]) and not is_temporary_checkpoint("last.pth")


# ---- CIFAR pickles ------------------------------------------------------------------------------
def batch_path(cifar10_root, name="data_batch_3"):
    return os.path.join(cifar10_root.root, "cifar-10-batches-py", name)


def test_planted_cifar_pickle_fails_in_one_line_without_running(cifar10_root, tmp_path):
    marker, path = tmp_path / "marker", batch_path(cifar10_root)
    with open(path, "wb") as handle:
        pickle.dump({"data": Planted(marker), "labels": [0]}, handle)
    with pytest.raises(DatasetError, match="data_batch_3: refused to unpickle 'posix.system'"):
        build_dataset("cifar10", DataOptions(data_root=cifar10_root.root, download=False))
    assert not marker.exists()
    result = run_script("main.py", "--dataset", "cifar10", "--data_root", cifar10_root.root, "--method", "ce",
                        "--epochs", "1", "--download", "False", "--out_dir", str(tmp_path / "run"))
    one_line_exit_2(result, path, "refused")
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_planted_pool_pickle_is_refused(tmp_path):
    marker, path = tmp_path / "marker", str(tmp_path / "ti_80M_selected.pickle")
    with open(path, "wb") as handle:
        pickle.dump({"data": np.zeros((2, 32, 32, 3), np.uint8), "extrapolated_targets": Planted(marker)}, handle)
    with pytest.raises(DatasetError, match="ti_80M_selected.pickle: refused"):
        semi.ti_pickle_pool(path)
    assert not marker.exists()


class ForgedObjects:
    """Unpickles as ``numpy.ndarray((4,), object, buffer=b"A" * 32)``: an array of Python objects
    whose elements are the address 0x4141414141414141; reading one would crash the process."""

    def __reduce__(self):
        return np.ndarray, ((4,), "O", b"A" * 32)


def test_forged_object_arrays_are_refused_unread(cifar10_root, tmp_path):
    # Through the allowed NumPy globals of both loaders (checkpoints; CIFAR and pool pickles).
    # Nothing may read the forged elements, not even an error message (that would segfault).
    payload = tiny_payload()
    payload["method"] = ForgedObjects()
    path = str(tmp_path / "forged.pth")
    torch.save(payload, path)
    with pytest.raises(UnsafeCheckpointError, match=r"refused to use an array of Python objects \(shape \(4,\)\)"):
        load_checkpoint(path)
    result = run_script("test.py", "--path", path)
    one_line_exit_2(result, path, "array of Python objects")
    pool = str(tmp_path / "ti.pickle")
    for protocol in (2, 4):
        with open(pool, "wb") as handle:
            pickle.dump({"data": ForgedObjects(), "extrapolated_targets": np.array([1])}, handle, protocol=protocol)
        with pytest.raises(DatasetError, match="numpy.ndarray called directly"):
            semi.ti_pickle_pool(pool)
    with open(pool, "wb") as handle:  # an object dtype built on its own is refused as well
        pickle.dump({"data": np.dtype("O"), "extrapolated_targets": np.array([1])}, handle, protocol=2)
    with pytest.raises(DatasetError, match="numpy.dtype of Python objects"):
        semi.ti_pickle_pool(pool)


def test_a_small_file_of_shared_nested_lists_is_named_quickly(tmp_path):
    # 100 bytes of pickle, 10^8 list items once expanded: the message describes it in a bounded
    # number of steps instead of building its whole str.
    bomb = [0]
    for _ in range(8):
        bomb = [bomb] * 10
    payload = tiny_payload()
    payload["method"] = bomb
    path = str(tmp_path / "bomb.pth")
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "its 'method' is [[[...], [...], [...], ...], [[...], ... (list), not a str" in message


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pool_pickle_of_arrays_loads_at_every_protocol(tmp_path, protocol):
    path = str(tmp_path / "ti.pickle")
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    with open(path, "wb") as handle:
        pickle.dump({"data": images, "extrapolated_targets": np.array([1, 0, 2])}, handle, protocol=protocol)
    pool = semi.ti_pickle_pool(path)
    np.testing.assert_array_equal(pool.images, images)
    assert pool.reference_labels.tolist() == [1, 0, 2]


def test_damaged_cifar_pickle_random_bytes_inserted_in_the_middle(cifar10_root):
    path = batch_path(cifar10_root)
    raw = open(path, "rb").read()
    middle = len(raw) // 2
    noise = np.random.default_rng(3).integers(0, 256, 64, dtype=np.uint8).tobytes()
    open(path, "wb").write(raw[:middle] + noise + raw[middle:])
    with pytest.raises(DatasetError) as caught:
        build_dataset("cifar10", DataOptions(data_root=cifar10_root.root, download=False))
    message = str(caught.value)
    assert f"{path} is damaged" in message and "--download True" in message and "\n" not in message


def test_damaged_cifar_pickle_truncated(cifar10_root):
    path = batch_path(cifar10_root)
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[:len(raw) // 3])
    with pytest.raises(DatasetError, match=f"{path} is damaged"):
        build_dataset("cifar10", DataOptions(data_root=cifar10_root.root, download=False))


def test_every_single_flipped_structure_byte_is_named_or_harmless(cifar10_root):
    """Flip each byte outside the pixel payload in turn: the read either names the file as
    damaged, or returns exactly the original pixels with labels in range (a flipped label value
    that stays in range cannot be told from a real label without a checksum)."""
    path = batch_path(cifar10_root)
    raw = open(path, "rb").read()
    original = _read_batches(cifar10_root.root, CIFAR10, ["data_batch_3"], 10).array
    rows = cifar10_root.train_rows[np.array_split(np.arange(len(cifar10_root.train_rows)), 5)[2]]
    start = raw.index(rows.tobytes())
    pixel_bytes = range(start, start + rows.nbytes)
    named = 0
    for position in range(len(raw)):
        if position in pixel_bytes:
            continue
        flipped = bytearray(raw)
        flipped[position] ^= 0xFF
        open(path, "wb").write(bytes(flipped))
        try:
            source = _read_batches(cifar10_root.root, CIFAR10, ["data_batch_3"], 10)
        except DatasetError as error:
            assert path in str(error) and "\n" not in str(error), (position, str(error))
            named += 1
            continue
        np.testing.assert_array_equal(source.array, original, err_msg=f"byte {position}")
        assert 0 <= source.targets.min() and source.targets.max() < 10
    assert named > (len(raw) - rows.nbytes) // 2  # most flips hit structure that the checks see


def test_official_batch_with_the_wrong_image_count_is_damaged(cifar10_root):
    path = batch_path(cifar10_root, "data_batch_1")
    rows = cifar10_root.train_rows[:80]
    with open(path, "wb") as handle:
        pickle.dump({"batch_label": "training batch 1 of 5", "labels": [0] * 80, "data": rows,
                     "filenames": [f"{i}.png" for i in range(80)]}, handle, protocol=2)
    with pytest.raises(DatasetError, match="data_batch_1 is damaged .80 images where the official file has 10000"):
        build_dataset("cifar10", DataOptions(data_root=cifar10_root.root, download=False))


@pytest.mark.parametrize("entry, fragment", [
    ({"data": np.zeros((8, 3072), np.float32), "labels": [0] * 8}, "uint8 N x 3072"),
    ({"data": np.zeros((8, 3071), np.uint8), "labels": [0] * 8}, "uint8 N x 3072"),
    ({"data": np.zeros((8, 3072), np.uint8), "labels": [0] * 7}, "8 pixel rows but 'labels'"),
    ({"data": np.zeros((8, 3072), np.uint8), "labels": [0] * 7 + [10]}, "labels must lie in 0..9"),
    ({"data": np.zeros((8, 3072), np.uint8), "labels": [0] * 8, "filenames": ["a"]}, "1 file names"),
    ({"data": np.zeros((8, 3072), np.uint8), "labels": [0] * 8, "filenames": 3}, "int file names"),
    ({"data": np.zeros((8, 3072), np.uint8), "labels": ["a"] * 8}, "'labels' holds <U1"),
    ([1, 2, 3], "holds a list"),
])
def test_what_was_read_is_checked(cifar10_root, entry, fragment):
    path = batch_path(cifar10_root)
    with open(path, "wb") as handle:
        pickle.dump(entry, handle)
    with pytest.raises(DatasetError) as caught:
        build_dataset("cifar10", DataOptions(data_root=cifar10_root.root, download=False))
    assert f"{path} is damaged" in str(caught.value) and fragment in str(caught.value)


def test_cifar100_fixture_loads_with_the_checks(cifar100_root):
    data = build_dataset("cifar100", DataOptions(data_root=cifar100_root.root, imb_factor=1.0, download=False))
    assert data.num_classes == 100 and len(data.test) == len(cifar100_root.test_labels)


# ---- pseudo-label files -------------------------------------------------------------------------
def test_pseudo_label_file_is_an_archive_without_pickles(tmp_path):
    pool = semi.Pool("toy", paths=["/a.png", "/b.png", "/c.png"], reference_labels=np.array([0, 1, 1]),
                     labeled_indices=np.array([4, 5]), validation_size=2)
    path = str(tmp_path / "pseudo.npz")
    semi.save_pseudo_labels(path, pool, np.array([0, 1, 0]), np.array([0.5, 0.9, 0.7]), num_classes=2,
                            dataset="toy", prediction_model="/runs/ce/last.pth", threshold=0.6)
    with np.load(path, allow_pickle=False) as archive:  # every member loads without pickle
        assert sorted(archive.files) == ["confidences", "labeled_indices", "meta", "paths", "pseudo_labels",
                                         "reference_labels"]
    entry = semi.load_pseudo_labels(path)
    assert entry["paths"] == ["/b.png", "/c.png"] and entry["pseudo_labels"].tolist() == [1, 0]
    assert entry["images"] is None and entry["labeled_indices"].tolist() == [4, 5]
    assert (entry["threshold"], entry["pool_size"], entry["validation_size"], entry["version"]) == (0.6, 3, 2, 2)


@pytest.mark.parametrize("member, value, message", [
    ("pseudo_labels", np.array([0.0, 1.0, 0.0]), "'pseudo_labels' must be a 1-D integer array, got 1-D float64"),
    ("pseudo_labels", np.array([[0, 1, 0]]), "'pseudo_labels' must be a 1-D integer array, got 2-D int64"),
    ("confidences", np.array(["a", "b", "c"]), "'confidences' must be a 1-D floating array, got 1-D <U1"),
    ("reference_labels", np.array([np.nan, 1, 1]), "'reference_labels' must be a 1-D integer array"),
    ("images", np.zeros((3, 32, 32, 4), np.uint8), "'images' must be N x H x W x 3 uint8 pixels, got 4-D uint8"),
    ("meta", {"num_classes": "2"}, "'num_classes' must be a positive number, got '2'"),
    ("meta", {"validation_size": "18"}, "'validation_size' must be a number, got '18'"),
    ("meta", {"version": "3"}, "its format version is '3', not a number"),
], ids=["labels-float", "labels-2d", "confidences-str", "reference-nan", "images-4ch", "classes-str",
        "validation-str", "version-str"])
def test_a_pseudo_label_file_with_a_damaged_member_is_named(tmp_path, member, value, message):
    import json

    pool = semi.Pool("toy", images=np.zeros((3, 32, 32, 3), np.uint8), reference_labels=np.array([0, 1, 1]))
    path = str(tmp_path / "pseudo.npz")
    semi.save_pseudo_labels(path, pool, np.array([0, 1, 0]), np.array([0.5, 0.9, 0.7]), num_classes=2,
                            dataset="toy", prediction_model="/runs/ce/last.pth")
    with np.load(path, allow_pickle=False) as archive:
        members = {name: archive[name] for name in archive.files}
    if member == "meta":
        value = np.array(json.dumps({**json.loads(str(members["meta"])), **value}))
    np.savez(path, **{**members, member: value})
    with pytest.raises(DatasetError) as caught:
        semi.load_pseudo_labels(path)
    assert message in str(caught.value) and path in str(caught.value)


def test_pickled_pseudo_label_files_are_not_unpickled(tmp_path):
    marker = tmp_path / "marker"
    old = str(tmp_path / "pseudo.pkl")
    with open(old, "wb") as handle:
        pickle.dump({"format": "ltkit-pseudo-labels", "version": 1, "x": Planted(marker)}, handle, protocol=4)
    with pytest.raises(DatasetError, match="pseudo.pkl: a pickle .*regenerate it"):
        semi.load_pseudo_labels(old)
    # An archive member holding a pickle (an object array) is refused by allow_pickle=False.
    planted = str(tmp_path / "planted.npz")
    np.savez(planted, pseudo_labels=np.array([Planted(marker)], dtype=object), meta=np.array("{}"))
    assert zipfile.is_zipfile(planted)
    with pytest.raises(DatasetError, match="planted.npz is damaged or not a pseudo-label file"):
        semi.load_pseudo_labels(planted)
    assert not marker.exists()


def test_gen_pseudolabels_writes_npz_only(tmp_path, capsys):
    script = entry_scripts()["gen_pseudolabels.py"]
    args = script.get_args_parser().parse_args(["--path", str(tmp_path), "--pool", "leftover",
                                                "--out", str(tmp_path / "pseudo.pkl")])
    assert run_guarded("gen_pseudolabels.py", lambda: script.main(args)) == 2
    assert "--out" in capsys.readouterr().err and not os.listdir(tmp_path)
