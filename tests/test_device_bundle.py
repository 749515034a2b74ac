"""scripts/device_bundle.py's wheel handling: wheel files spell a distribution's '-' as '_'."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import device_bundle  # noqa: E402


def test_a_wheel_belongs_to_its_distribution_only():
    assert device_bundle.wheel_of("pytest-xdist", "pytest_xdist-3.8.0-py3-none-any.whl")
    assert device_bundle.wheel_of("tensorboardX", "tensorboardx-2.6.2-py2.py3-none-any.whl")
    assert not device_bundle.wheel_of("pytest", "pytest_xdist-3.8.0-py3-none-any.whl")
    assert not device_bundle.wheel_of("pytest-xdist", "pytest-8.3.0-py3-none-any.whl")


def test_copied_wheels_cover_every_package_and_a_missing_one_is_named(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for spec in device_bundle.PACKAGES.values():
        name = spec.split(">")[0].replace("-", "_")  # as pip saves them
        (source / f"{name}-1.0-py3-none-any.whl").write_bytes(b"")
    wheels = device_bundle.download_wheels(str(tmp_path / "bundle"), str(source))
    assert len(wheels) == len(device_bundle.PACKAGES) and "pytest_xdist-1.0-py3-none-any.whl" in wheels
    (source / "execnet-1.0-py3-none-any.whl").unlink()
    with pytest.raises(device_bundle.BundleError, match="lacks wheels for execnet"):
        device_bundle.download_wheels(str(tmp_path / "other"), str(source))


def test_the_summary_sets_the_compiled_run_beside_the_eager_one(tmp_path, capsys):
    import json

    for name, top1, seconds, run in (("eager", 61.5, 40.0, {"compile": False, "compile_mode": "default"}),
                                     ("compiled", 61.25, 12.0, {"compile": True, "compile_mode": "reduce-overhead"})):
        folder = tmp_path / f"parity_{name}"
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps({"last": {"top1": top1, "epoch": 30}, "train_time_s": seconds}))
        (folder / "config.json").write_text(json.dumps({"run": run}))
    parity = device_bundle.parity_summary(str(tmp_path))
    assert parity["compiled"] == {"top1_last": 61.25, "epochs": 30, "train_time_s": 12.0,
                                  "compile_mode": "reduce-overhead"}
    assert parity["eager"]["compile_mode"] is None
    assert device_bundle.main(["summary", str(tmp_path)]) == 0
    assert ("compile parity (CE, seed 0, same epochs): eager top-1 61.50, 40 s; compiled top-1 61.25, 12 s "
            "(reduce-overhead)") in capsys.readouterr().out


def test_pickles_are_read_as_arrays_and_one_that_names_code_is_refused(tmp_path):
    import pickle

    from conftest import write_cifar

    cifar = write_cifar(str(tmp_path), num_classes=10, train_per_class=3, test_per_class=2)
    folder = str(tmp_path / "cifar-10-batches-py")
    train_labels, train_images, test_labels, test_images, names = device_bundle.read_pickles(folder)
    assert train_images.shape == (30, 32, 32, 3) and test_images.shape == (20, 32, 32, 3)
    assert train_labels == list(cifar.train_labels) and names[0] == "class_00"

    class RunsCode:  # what a hostile pickle does: call a function while it is read
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "ran"),))

    with open(os.path.join(folder, "test_batch"), "wb") as handle:
        pickle.dump({"data": RunsCode(), "labels": [0]}, handle)
    with pytest.raises(device_bundle.BundleError, match="test_batch names '(posix|nt).system'"):
        device_bundle.read_pickles(folder)
    assert not (tmp_path / "ran").exists()


def test_unpack_never_replaces_cifar_files_it_did_not_write(tmp_path, capsys):
    # The real CIFAR-10 under --data_root: the bundle's subset (black where nothing was selected)
    # must not overwrite it; the refusal comes before anything is written.
    import json

    import numpy as np

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    np.savez(bundle / device_bundle.DATA_FILE, manifest=np.array(json.dumps({"protocol": device_bundle.PROTOCOL})))
    real = tmp_path / "data" / "cifar-10-batches-py"
    real.mkdir(parents=True)
    (real / "data_batch_1").write_bytes(b"the real batch")
    code = device_bundle.main(["unpack", "--bundle", str(bundle), "--data_root", str(tmp_path / "data")])
    error = capsys.readouterr().err
    assert code == 2 and "already holds CIFAR-10 files that no bundle wrote" in error and error.count("\n") == 1
    assert sorted(os.listdir(real)) == ["data_batch_1"] and (real / "data_batch_1").read_bytes() == b"the real batch"

    # A folder an interrupted unpack left (its stamp says so) is the script's own: unpacked again,
    # not refused: it gets past the check to reading the images, which this minimal bundle lacks.
    (real / "bundle.json").write_text(json.dumps({"unpacking": True}))
    with pytest.raises(KeyError, match="kept"):
        device_bundle.unpack(device_bundle.get_args_parser().parse_args(
            ["unpack", "--bundle", str(bundle), "--data_root", str(tmp_path / "data")]))
    assert json.loads((real / "bundle.json").read_text()) == {"unpacking": True}
