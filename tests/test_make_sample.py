"""scripts/make_sample.py: the balanced sample from a JPEG folder, and OUT kept whole on bad input."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import make_sample  # noqa: E402


def tree(folder):
    """Every file below `folder` by its relative path, with its bytes."""
    return {os.path.relpath(os.path.join(base, name), folder): open(os.path.join(base, name), "rb").read()
            for base, _, names in os.walk(folder) for name in names}


@pytest.fixture
def source(tmp_path):
    """Three classes, three training and two test 'images' each (distinct bytes), train.txt in a
    shuffled class order as CIFAR's."""
    src = tmp_path / "src"
    (src / "classes.txt").parent.mkdir()
    (src / "classes.txt").write_text("cat\ndog\nfox\n")
    for split, per_class in (("train", 3), ("test", 2)):
        lines = []
        for i in range(per_class):
            for label in (2, 0, 1):
                relative = f"{split}/{label}_{i}.jpg"
                (src / relative).parent.mkdir(exist_ok=True)
                (src / relative).write_bytes(f"{split} {label} {i}".encode())
                lines.append(f"{relative} {label}\n")
        (src / f"{split}.txt").write_text("".join(lines))
    return src


def test_the_first_images_of_each_class_are_copied_byte_for_byte(source, tmp_path, capsys):
    out = tmp_path / "sample"
    assert make_sample.main([str(source), str(out), "--train_per_class", "2", "--test_per_class", "1"]) == 0
    assert (out / "train.txt").read_text().splitlines() == [
        "train/fox/0000.jpg 2", "train/cat/0000.jpg 0", "train/dog/0000.jpg 1",
        "train/fox/0001.jpg 2", "train/cat/0001.jpg 0", "train/dog/0001.jpg 1"]
    assert (out / "train" / "dog" / "0001.jpg").read_bytes() == b"train 1 1"
    assert (out / "test.txt").read_text().splitlines() == ["test/fox/0000.jpg 2", "test/cat/0000.jpg 0",
                                                           "test/dog/0000.jpg 1"]
    assert (out / "classes.txt").read_text() == "cat\ndog\nfox\n"
    assert "first 2 training" in (out / "README.md").read_text()


@pytest.mark.parametrize("damage, message", [
    (lambda src: (src / "test.txt").write_text("test/2_0.jpg 2\ntest/nothere.jpg 0\ntest/1_0.jpg 1\n"),
     "test.txt lists 1 file(s) missing under"),
    (lambda src: (src / "train.txt").write_text("train/2_0.jpg two\n"), "train.txt:1: expected 'relative/path label'"),
    (lambda src: (src / "train.txt").write_text("train/2_0.jpg 7\n"), "with a label below 3"),
    (lambda src: os.remove(src / "classes.txt"), "classes.txt does not exist"),
    (lambda src: (src / "train.txt").write_bytes(b"\xff\xfe bad"), "train.txt is not UTF-8 text"),
], ids=["missing-image", "bad-label", "label-range", "no-classes", "not-utf8"])
def test_bad_input_is_one_line_and_an_earlier_sample_survives_overwrite(source, tmp_path, capsys, damage, message):
    out = tmp_path / "sample"
    assert make_sample.main([str(source), str(out), "--train_per_class", "1", "--test_per_class", "1"]) == 0
    before = tree(out)
    damage(source)
    capsys.readouterr()
    one_each = ["--train_per_class", "1", "--test_per_class", "1"]
    assert make_sample.main([str(source), str(out), *one_each, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("make_sample.py: error: ") and err.count("\n") == 1 and message in err, err
    assert tree(out) == before and sorted(os.listdir(tmp_path)) == ["sample", "src"]  # no half-built folder


def test_an_existing_out_needs_overwrite_and_is_then_replaced_whole(source, tmp_path, capsys):
    out = tmp_path / "sample"
    out.mkdir()
    (out / "stale.jpg").write_bytes(b"old")
    assert make_sample.main([str(source), str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and (out / "stale.jpg").exists()
    assert make_sample.main([str(source), str(out), "--train_per_class", "3", "--test_per_class", "2",
                             "--overwrite"]) == 0
    assert not (out / "stale.jpg").exists() and len((out / "train.txt").read_text().splitlines()) == 9
    assert sorted(os.listdir(tmp_path)) == ["sample", "src"]


@pytest.mark.parametrize("where", ["inside", "around", "link"])
def test_an_out_that_would_touch_the_source_is_refused(source, tmp_path, capsys, where):
    before = tree(source)
    if where == "link":
        (tmp_path / "real").mkdir()
        os.symlink(tmp_path / "real", tmp_path / "link")
        out, message = tmp_path / "link", "is a symbolic link"
    else:
        out, message = (source / "train", "lie one inside the other") if where == "inside" else (tmp_path, "lie one")
    assert make_sample.main([str(source), str(out), "--train_per_class", "1", "--test_per_class", "1",
                             "--overwrite"]) == 2
    assert message in capsys.readouterr().err and tree(source) == before
