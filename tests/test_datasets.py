"""Dataset factories on synthetic files, the download boundary, the bundled sample and the stats script."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
import urllib.error

import numpy as np
import pytest

from conftest import write_cifar, write_image_lists
from datasets import DATASETS, DataOptions, DatasetError, ImageDataset, LongTailData, build_dataset
from datasets.cifar_lt import CIFAR10, CIFAR100
from datasets.longtail import class_counts, select_indices
from datasets.sample import SAMPLE_DIR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_COUNTS = [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]


def test_registry_lists_every_dataset():
    assert DATASETS.names() == sorted(
        ["cifar10", "cifar100", "cifar10_sample", "imagenet_lt", "inat2018", "places_lt", "image_list", "svhn"]
    )
    with pytest.raises(KeyError, match="cifar10_sample"):
        build_dataset("cifar1O", DataOptions())


def positions(array: np.ndarray) -> np.ndarray:
    """Reads back the file position the fixtures wrote into the first two red pixels."""
    return array[:, 0, 0, 0].astype(np.int64) + 256 * array[:, 0, 1, 0].astype(np.int64)


@pytest.mark.parametrize("selection", ["shuffle", "first"])
def test_cifar10_from_pickles(cifar10_root, selection):
    options = DataOptions(
        data_root=cifar10_root.root, imb_factor=0.1, lt_selection=selection, lt_seed=3, download=False
    )
    data = build_dataset("cifar10", options)
    counts = class_counts(40, 10, "exp", 0.1)
    assert isinstance(data, LongTailData) and data.name == "cifar10" and data.num_classes == 10
    assert data.train_counts == counts and len(data.train) == sum(counts)
    np.testing.assert_array_equal(data.train_indices, select_indices(cifar10_root.train_labels, counts, selection, 3))
    np.testing.assert_array_equal(positions(data.train.array), data.train_indices)
    np.testing.assert_array_equal(data.train.targets, cifar10_root.train_labels[data.train_indices])
    assert data.train.array.shape == (sum(counts), 32, 32, 3) and data.train.array.dtype == np.uint8
    np.testing.assert_array_equal(data.test.targets, cifar10_root.test_labels)
    assert data.class_names == cifar10_root.class_names
    assert (data.mean, data.std) == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    assert data.image_size == 32 and data.style == "cifar" and data.val is None
    # The unlabeled pool is every training image not selected, true labels kept.
    assert len(data.unlabeled) + len(data.train) == 400
    assert np.bincount(data.unlabeled.targets, minlength=10).tolist() == [40 - n for n in counts]


def test_cifar_rows_are_unpacked_channel_planar(cifar10_root):
    data = build_dataset("cifar10", DataOptions(data_root=cifar10_root.root, imb_factor=1.0, download=False))
    row = cifar10_root.train_rows[data.train_indices[0]]
    np.testing.assert_array_equal(data.train.array[0], row.reshape(3, 32, 32).transpose(1, 2, 0))
    assert data.unlabeled is None  # at imb_factor 1 nothing is left over


def test_cifar10_validation_split(cifar10_root):
    options = DataOptions(data_root=cifar10_root.root, imb_factor=0.1, val_per_class=3, download=False)
    data = build_dataset("cifar10", options)
    # Class 0 gives all its images to training, so it has no validation images.
    assert np.bincount(data.val.targets, minlength=10).tolist() == [0] + [3] * 9
    val_positions, pool_positions = positions(data.val.array), positions(data.unlabeled.array)
    assert not set(val_positions) & set(data.train_indices)
    assert not set(val_positions) & set(pool_positions)
    assert len(data.train) + len(data.val) + len(data.unlabeled) == 400


def test_cifar100_from_pickles(cifar100_root):
    data = build_dataset("cifar100", DataOptions(data_root=cifar100_root.root, imb_factor=0.1, download=False))
    counts = class_counts(12, 100, "exp", 0.1)
    assert data.num_classes == 100 and data.train_counts == counts
    np.testing.assert_array_equal(data.train.targets, cifar100_root.train_labels[data.train_indices])
    np.testing.assert_array_equal(positions(data.train.array), data.train_indices)
    assert len(data.test) == 200 and data.class_names[7] == "class_07"


def test_existing_files_are_trusted_without_md5_or_download(cifar10_root, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def must_not_run(*args, **kwargs):
        raise AssertionError("files exist, nothing should be downloaded")

    monkeypatch.setattr(tv_utils, "download_url", must_not_run)
    assert build_dataset("cifar10", DataOptions(data_root=cifar10_root.root, download=True)).num_classes == 10


@pytest.mark.parametrize("name, layout, classes", [("cifar10", CIFAR10, 10), ("cifar100", CIFAR100, 100)])
def test_download_is_called_with_the_official_archive(tmp_path, monkeypatch, name, layout, classes):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download(url, root, filename=None, md5=None):
        calls.append(dict(url=url, root=root, filename=filename, md5=md5))
        with open(os.path.join(root, filename), "wb") as stream:
            stream.write(b"archive")

    def fake_extract(archive, to_path):
        write_cifar(to_path, classes, 5, 1)  # what extracting the archive would leave

    monkeypatch.setattr(tv_utils, "download_url", fake_download)
    monkeypatch.setattr(tv_utils, "extract_archive", fake_extract)
    root = str(tmp_path / "fresh")
    data = build_dataset(name, DataOptions(data_root=root, imb_factor=1.0))
    expected_md5 = {"cifar10": "c58f30108f718f92721af3b95e74349a", "cifar100": "eb9058c3a382ffc7106e4002c42a8d85"}
    archive = os.path.basename(layout.url)
    # Fetched and extracted in a folder of this process's own, then moved into place.
    assert [{**call, "root": os.path.dirname(call["root"])} for call in calls] == [
        dict(url=layout.url, root=root, filename=archive, md5=expected_md5[name])]
    assert os.path.basename(calls[0]["root"]).startswith(".download-")
    assert sorted(os.listdir(root)) == sorted([archive, layout.folder])
    assert layout.url.startswith("https://www.cs.toronto.edu/~kriz/")
    assert data.train_counts == [5] * classes


def test_a_killed_download_s_staging_folder_is_removed_by_the_next_one(tmp_path):
    import socket

    from datasets.base import staging_folder

    host = socket.gethostname()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead, alive = int(finished.stdout), os.getppid()
    for name in (f".download-{host}-{dead}", f".download-{host}-{alive}", ".download-otherhost-1", "keep"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "cifar-10-python.tar.gz").write_bytes(b"part")
    with staging_folder(str(tmp_path)) as path:
        assert os.path.basename(path) == f".download-{host}-{os.getpid()}"
        # The dead process's half-download is gone; a live process's, another host's and the
        # user's own folders stay.
        assert sorted(os.listdir(tmp_path)) == sorted([f".download-{host}-{alive}", ".download-otherhost-1", "keep",
                                                       os.path.basename(path)])
    assert sorted(os.listdir(tmp_path)) == sorted([f".download-{host}-{alive}", ".download-otherhost-1", "keep"])


def test_a_cut_download_leaves_nothing_and_a_partial_folder_is_not_overwritten(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def interrupted(url, root, filename=None, md5=None):
        with open(os.path.join(root, filename), "wb") as stream:
            stream.write(b"part of the archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(tv_utils, "download_url", interrupted)
    (tmp_path / "data").mkdir()
    with pytest.raises(KeyboardInterrupt):
        build_dataset("cifar10", DataOptions(data_root=str(tmp_path / "data")))
    assert os.listdir(tmp_path / "data") == []  # no partial archive a later run could take for the real one
    # A folder holding some of the batches (the user's copies) is neither mixed with nor replaced
    # by the official archive.
    write_cifar(str(tmp_path / "data"), 10, 5, 1)
    os.remove(tmp_path / "data" / "cifar-10-batches-py" / "data_batch_3")
    monkeypatch.setattr(tv_utils, "download_url", lambda *a, **k: pytest.fail("no download"))
    with pytest.raises(DatasetError, match="cifar-10-batches-py holds some CIFAR files but not data_batch_3: "
                                           "put the missing files there, or move the folder away"):
        build_dataset("cifar10", DataOptions(data_root=str(tmp_path / "data")))


def test_offline_download_becomes_one_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def offline(url, root, filename=None, md5=None):
        # As torchvision does: the folder is made, and a broken transfer leaves part of the archive.
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, filename), "wb") as stream:
            stream.write(b"partial")
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    root = str(tmp_path / "nowhere" / "data")
    with pytest.raises(DatasetError) as caught:
        build_dataset("cifar10", DataOptions(data_root=root))
    message = str(caught.value)
    assert "\n" not in message
    for part in (root, "cifar-10-batches-py", CIFAR10.url, "--dataset cifar10_sample", "name resolution"):
        assert part in message
    # A mistyped --data_root leaves no folder behind; a folder that existed is not removed and
    # keeps what it held (and nothing more).
    assert os.listdir(tmp_path) == []
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="cannot download CIFAR"):
        build_dataset("cifar10", DataOptions(data_root=str(tmp_path / "data")))
    assert os.listdir(tmp_path / "data") == ["notes.txt"] and (tmp_path / "data" / "notes.txt").read_text() == "mine"
    # Under DDP every rank builds the data, and another may be writing into the new folder: it stays.
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DatasetError, match="cannot download CIFAR"):
        build_dataset("cifar10", DataOptions(data_root=str(tmp_path / "ddp" / "data")))
    assert (tmp_path / "ddp" / "data").is_dir()


def test_missing_files_without_download(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    monkeypatch.setattr(tv_utils, "download_url", lambda *a, **k: pytest.fail("download is off"))
    with pytest.raises(DatasetError, match="cifar-100-python.*cifar10_sample"):
        build_dataset("cifar100", DataOptions(data_root=str(tmp_path), download=False))


def test_a_data_root_that_is_a_file_is_named_before_any_download(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    monkeypatch.setattr(tv_utils, "download_url", lambda *a, **k: pytest.fail("no download"))
    (tmp_path / "data").write_text("not a folder")
    with pytest.raises(DatasetError, match=r"--data_root .*data is a file, not a folder"):
        build_dataset("cifar10", DataOptions(data_root=str(tmp_path / "data")))


def test_pickle_with_wrong_keys_is_named(cifar10_root):
    path = os.path.join(cifar10_root.root, "cifar-10-batches-py", "data_batch_2")
    with open(path, "wb") as handle:
        pickle.dump({"data": cifar10_root.train_rows[:10], "fine_labels": [0] * 10}, handle)
    with pytest.raises(DatasetError, match="data_batch_2.*'labels'"):
        build_dataset("cifar10", DataOptions(data_root=cifar10_root.root, download=False))


def test_bad_recipe_flag_is_a_dataset_error(cifar10_root):
    with pytest.raises(DatasetError, match="--imb_factor"):
        build_dataset("cifar10", DataOptions(data_root=cifar10_root.root, imb_factor=2.0, download=False))


# ---- list-file datasets ----------------------------------------------------------------------


def list_options(lists, **overrides) -> DataOptions:
    return DataOptions(data_root=lists.data_root, split_dir=lists.split_dir, **overrides)


def test_imagenet_lt_from_lists(imagenet_lt_lists):
    data = build_dataset("imagenet_lt", list_options(imagenet_lt_lists))
    assert data.num_classes == 3 and data.train_counts == [5, 3, 1]
    assert (len(data.train), len(data.val), len(data.test)) == (9, 6, 6)
    assert not data.train.in_memory and data.image_size == 224 and data.style == "imagenet"
    assert data.mean == (0.485, 0.456, 0.406) and data.unlabeled is None
    np.testing.assert_array_equal(data.train_indices, np.arange(9))
    views, target, index = ImageDataset(data.train, lambda image: image.size)[6]
    assert (views, target, index) == ((8, 6), 1, 6)


def test_inat_val_doubles_as_test(tmp_path):
    lists = write_image_lists(tmp_path, "iNaturalist18", ["train", "val"])
    data = build_dataset("inat2018", list_options(lists))
    assert len(data.test) == 6 and data.val is None
    assert data.mean == (0.466, 0.471, 0.380) and data.std == (0.195, 0.194, 0.192)


def test_inat_val_list_of_ones_own_validates_and_the_upstream_list_stays_the_test_set(tmp_path):
    lists = write_image_lists(tmp_path, "iNaturalist18", ["train", "val"])
    train_list = os.path.join(lists.split_dir, "iNaturalist18_train.txt")
    data = build_dataset("inat2018", list_options(lists, val_list=train_list))
    assert (len(data.val), len(data.test)) == (9, 6)  # the training list here, the upstream val list
    # A --test_list leaves the upstream list out entirely (it is not a validation split either).
    swapped = build_dataset("inat2018", list_options(lists, test_list=train_list))
    assert len(swapped.test) == 9 and swapped.val is None
    upstream = os.path.join(lists.split_dir, "iNaturalist18_val.txt")
    with pytest.raises(DatasetError, match="--val_list .*iNaturalist18_val.txt is the test list of inat2018"):
        build_dataset("inat2018", list_options(lists, val_list=upstream))


def test_places_lt_and_list_overrides(tmp_path):
    lists = write_image_lists(tmp_path, "Places_LT", ["train", "val", "test"])
    data = build_dataset("places_lt", list_options(lists))
    assert data.train_counts == [5, 3, 1]
    # An explicit --test_list wins over the upstream name in --split_dir.
    train_list = os.path.join(lists.split_dir, "Places_LT_train.txt")
    swapped = build_dataset("places_lt", list_options(lists, test_list=train_list))
    assert len(swapped.test) == 9


def test_image_list_needs_explicit_lists_and_reads_class_names(imagenet_lt_lists):
    with pytest.raises(DatasetError, match="--train_list and --test_list"):
        build_dataset("image_list", DataOptions(data_root=imagenet_lt_lists.data_root))
    train = os.path.join(imagenet_lt_lists.split_dir, "ImageNet_LT_train.txt")
    test = os.path.join(imagenet_lt_lists.split_dir, "ImageNet_LT_test.txt")
    with open(os.path.join(imagenet_lt_lists.split_dir, "classes.txt"), "w") as handle:
        handle.write("cat\ndog\nowl\n")
    options = DataOptions(data_root=imagenet_lt_lists.data_root, train_list=train, test_list=test)
    data = build_dataset("image_list", options)
    assert data.class_names == ["cat", "dog", "owl"] and data.val is None and data.train_counts == [5, 3, 1]


def test_missing_list_names_the_path(imagenet_lt_lists, tmp_path):
    os.remove(os.path.join(imagenet_lt_lists.split_dir, "ImageNet_LT_val.txt"))
    with pytest.raises(DatasetError, match="list file not found: .*ImageNet_LT_val.txt"):
        build_dataset("imagenet_lt", list_options(imagenet_lt_lists))


def test_malformed_line_names_file_and_line(imagenet_lt_lists):
    path = os.path.join(imagenet_lt_lists.split_dir, "ImageNet_LT_train.txt")
    with open(path, "a") as handle:
        handle.write("\ntrain/c0/0.png zero\n")
    with pytest.raises(DatasetError, match=r"ImageNet_LT_train.txt:11: expected"):
        build_dataset("imagenet_lt", list_options(imagenet_lt_lists))


def test_wrong_data_root_fails_at_once_with_the_path(imagenet_lt_lists, tmp_path):
    options = DataOptions(data_root=str(tmp_path / "wrong"), split_dir=imagenet_lt_lists.split_dir)
    with pytest.raises(DatasetError, match=r"image not found: .*wrong/train/c0/0.png"):
        build_dataset("imagenet_lt", options)


def test_a_repeated_list_line_is_named(imagenet_lt_lists):
    path = os.path.join(imagenet_lt_lists.split_dir, "ImageNet_LT_train.txt")
    with open(path) as handle:
        first = handle.readline()
    with open(path, "a") as handle:
        handle.write(first)
    with pytest.raises(DatasetError, match=r"ImageNet_LT_train.txt:10: train/\S+ is listed again \(first on line 1\)"):
        build_dataset("imagenet_lt", list_options(imagenet_lt_lists))


def test_wide_pixels_and_decompression_bombs_are_refused_not_clipped(tmp_path, monkeypatch):
    from PIL import Image

    from datasets.base import load_image
    from datasets.loaders import unreadable_image

    wide = str(tmp_path / "wide.png")
    Image.fromarray(np.full((4, 4), 1000, dtype=np.uint16)).save(wide)  # convert("RGB") would make it white
    with pytest.raises(DatasetError, match=r"wide.png has I;16 pixels \(16-bit or wider\)"):
        load_image(wide)
    assert "of I;16 pixels (16-bit or wider)" in unreadable_image(wide)
    big = str(tmp_path / "big.png")
    Image.new("RGB", (64, 64)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 pixels is more than twice the limit
    with pytest.raises(DatasetError, match=r"cannot read image .*big.png: Image size \(4096 pixels\) exceeds"):
        load_image(big)


def test_later_missing_image_fails_at_load_time(imagenet_lt_lists):
    os.remove(os.path.join(imagenet_lt_lists.data_root, "train", "c2", "0.png"))
    data = build_dataset("imagenet_lt", list_options(imagenet_lt_lists))  # lazy: no error yet
    with pytest.raises(DatasetError, match=r"image not found: .*c2/0.png"):
        data.train.load(8)


def test_labels_must_cover_every_class(imagenet_lt_lists):
    path = os.path.join(imagenet_lt_lists.split_dir, "ImageNet_LT_train.txt")
    with open(path) as handle:
        lines = [line.replace(" 1\n", " 4\n") for line in handle]
    with open(path, "w") as handle:
        handle.writelines(lines)
    with pytest.raises(DatasetError, match="labels must be 0..4.*missing 1, 3"):
        build_dataset("imagenet_lt", list_options(imagenet_lt_lists))


def test_test_labels_outside_training_classes(imagenet_lt_lists):
    with open(os.path.join(imagenet_lt_lists.split_dir, "ImageNet_LT_test.txt"), "a") as handle:
        handle.write("test/c0/extra.png 3\n")
    with pytest.raises(DatasetError, match="label 3 is outside the training classes 0..2"):
        build_dataset("imagenet_lt", list_options(imagenet_lt_lists))


def test_val_per_class_is_refused_for_list_datasets(imagenet_lt_lists):
    with pytest.raises(DatasetError, match="--val_per_class"):
        build_dataset("imagenet_lt", list_options(imagenet_lt_lists, val_per_class=2))


# ---- bundled sample and stats script -----------------------------------------------------------


def sample_targets() -> np.ndarray:
    with open(os.path.join(SAMPLE_DIR, "train.txt")) as handle:
        return np.array([int(line.split()[1]) for line in handle])


def test_bundled_sample_gives_cifar10_lt_counts():
    start = time.perf_counter()
    data = build_dataset("cifar10_sample", DataOptions(imb_factor=0.01))
    seconds = time.perf_counter() - start
    assert data.num_classes == 10 and data.train_counts == SAMPLE_COUNTS
    assert data.train.array.shape == (1236, 32, 32, 3) and data.train.array.dtype == np.uint8
    assert len(data.test) == 1000 and np.bincount(data.test.targets).tolist() == [100] * 10
    assert data.class_names[0] == "airplane" and data.class_names[9] == "truck"
    assert data.image_size == 32 and data.mean == (0.4914, 0.4822, 0.4465)
    np.testing.assert_array_equal(data.train_indices, select_indices(sample_targets(), SAMPLE_COUNTS, "shuffle", 0))
    assert len(data.unlabeled) == 5000 - 1236
    assert seconds < 5.0, f"the sample took {seconds:.1f} s to load"


def test_sample_data_root_override(tmp_path):
    with pytest.raises(DatasetError, match="has no train.txt"):
        build_dataset("cifar10_sample", DataOptions(data_root=str(tmp_path)))
    data = build_dataset("cifar10_sample", DataOptions(data_root=SAMPLE_DIR, imb_factor=0.1, imb_type="step"))
    assert data.train_counts == [500] * 5 + [50] * 5


def run_stats(*flags: str) -> subprocess.CompletedProcess:
    script = os.path.join("scripts", "dataset_stats.py")
    return subprocess.run([sys.executable, script, *flags], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_stats_script_json_on_the_sample(tmp_path):
    plot = tmp_path / "counts.png"
    done = run_stats("--dataset", "cifar10_sample", "--imb_factor", "0.01", "--json", "--plot", str(plot))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["num_classes"] == 10 and summary["counts"] == SAMPLE_COUNTS and summary["total"] == 1236
    assert summary["groups"] == {"many": [0, 1, 2, 3], "medium": [4, 5, 6], "few": [7, 8, 9]}
    assert summary["indices"] == select_indices(sample_targets(), SAMPLE_COUNTS, "shuffle", 0).tolist()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stats_script_reports_errors_in_one_line(tmp_path):
    done = run_stats("--dataset", "imagenet_lt", "--data_root", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert "ImageNet_LT_train.txt" in done.stderr


def test_a_moved_data_folder_takes_the_lists_inside_it_along(tmp_path):
    """test.py --data_root NEW for a run whose data folder (lists included) moved; a list kept
    outside the data folder, still where the run read it, stays."""
    import dataclasses

    from datasets.rebuild import data_options

    old, new = tmp_path / "old", tmp_path / "new"
    (new / "lists").mkdir(parents=True)
    (tmp_path / "test.txt").write_text("")
    recorded = DataOptions(data_root=str(old), train_list=str(old / "lists" / "train.txt"),
                           test_list=str(tmp_path / "test.txt"))
    payload = {"path": str(tmp_path / "run" / "best.pth"), "config": {},
               "dataset": {"name": "image_list", "options": dataclasses.asdict(recorded)}}
    options = data_options(payload, str(new))
    assert (options.data_root, options.train_list, options.test_list) == (
        str(new), str(new / "lists" / "train.txt"), str(tmp_path / "test.txt"))
    (tmp_path / "file").write_text("")
    with pytest.raises(DatasetError, match=r"file \(--data_root\) is a file, not a folder"):
        data_options(payload, str(tmp_path / "file"))


def test_the_sample_run_records_the_folder_it_read(tmp_path):
    # With the default --data_root, cifar10_sample reads ./data when it holds a train.txt and the
    # bundled sample otherwise: the checkpoint must name the one read, or test.py scores others.
    from datasets.loaders import absolute_data_options

    assert absolute_data_options("cifar10_sample", DataOptions(), base=str(tmp_path)).data_root == SAMPLE_DIR
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.txt").write_text("")
    recorded = absolute_data_options("cifar10_sample", DataOptions(), base=str(tmp_path)).data_root
    assert recorded == str(tmp_path / "data")
    assert absolute_data_options("cifar10", DataOptions(), base=str(tmp_path)).data_root == str(tmp_path / "data")
