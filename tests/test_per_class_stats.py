"""scripts/per_class_stats.py: per_class.csv (as the run logger writes it) as Markdown tables."""
import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import per_class_stats  # noqa: E402

from utils.logger import RunLogger  # noqa: E402


def write_run(folder, epochs=8):
    logger = RunLogger(str(folder), tensorboard=False)
    for epoch in range(1, epochs + 1):
        # Three classes; the teacher's counted labels move towards the tail as epochs pass.
        logger.per_class({"lcsl/counted_labels": [0.0, 10.0 * epoch, 30.0],
                          "lcsl/student_row_norm": [1.5, 1.25, 0.5 + epoch / 100]}, epoch)
    logger.close()
    with open(folder / "results.json", "w") as stream:
        json.dump({"train_counts": [500, 50, 5]}, stream)


def test_tables_pick_quarters_and_show_shares(tmp_path, capsys):
    write_run(tmp_path)
    assert per_class_stats.main([str(tmp_path), "--stat", "lcsl/counted_labels", "--share"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| epoch | 0 (500) | 1 (50) | 2 (5) | sum |"
    rows = [line for line in lines if line.startswith("| ") and line[2].isdigit()]
    # Epochs 1, 2, 4, 6 and 8 of 8 (first, quarters, last); epoch 2: 0, 20 and 30 of 50.
    assert [row.split(" | ")[0] for row in rows] == ["| 1", "| 2", "| 4", "| 6", "| 8"]
    assert rows[1] == "| 2 | 0.0 | 40.0 | 60.0 | 50 |"
    assert rows[4] == "| 8 | 0.0 | 72.7 | 27.3 | 110 |"  # 80 and 30 of 110


def test_plain_values_chosen_epochs_and_every_statistic(tmp_path, capsys):
    write_run(tmp_path)
    assert per_class_stats.main([str(tmp_path), "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path}: lcsl/counted_labels" in out and f"{tmp_path}: lcsl/student_row_norm" in out
    assert "| 3 | 0 | 30 | 30 | 60 |" in out and "| 3 | 1.5 | 1.25 | 0.53 | 3.28 |" in out


def test_errors_name_the_file_the_statistic_or_the_epoch(tmp_path, capsys):
    assert per_class_stats.main([str(tmp_path)]) == 2
    assert "per_class.csv is missing" in capsys.readouterr().err
    write_run(tmp_path, epochs=2)
    assert per_class_stats.main([str(tmp_path), "--stat", "bccl/none"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no statistic bccl/none" in error and "lcsl/counted_labels" in error
    assert per_class_stats.main([str(tmp_path), "--epochs", "9"]) == 2
    assert "epoch 9 is not recorded (recorded: 1 to 2)" in capsys.readouterr().err
    (tmp_path / "per_class.csv").write_text("epoch,statistic,class_0\n1,x,abc\n")
    assert per_class_stats.main([str(tmp_path)]) == 2
    assert "per_class.csv:2: expected epoch, statistic, then numbers" in capsys.readouterr().err


@pytest.mark.parametrize("csv_bytes, results, message", [
    (b"epoch,statistic,class_0\n1,x,\xff\n", None, "per_class.csv is not UTF-8 text"),
    (b"epoch,statistic,class_0\n1,x,3\n", '{"train_counts": "10"}', "results.json: 'train_counts' must be a list"),
    (b"epoch,statistic,class_0\n1,x,3\n", "{", "results.json is not readable JSON"),
], ids=["not-utf8", "counts-str", "results-invalid"])
def test_damaged_files_are_one_line(tmp_path, capsys, csv_bytes, results, message):
    (tmp_path / "per_class.csv").write_bytes(csv_bytes)
    if results is not None:
        (tmp_path / "results.json").write_text(results)
    assert per_class_stats.main([str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error, error


def test_a_diverged_epoch_is_shown_as_recorded(tmp_path, capsys):
    (tmp_path / "per_class.csv").write_text("epoch,statistic,class_0,class_1\n1,x,3,1\n2,x,nan,1\n")
    assert per_class_stats.main([str(tmp_path), "--share"]) == 0
    out = capsys.readouterr().out
    assert "| 1 | 75.0 | 25.0 | 4 |" in out and "| 2 | nan | 1 | nan |" in out


def test_results_of_another_shape_only_lose_the_counts_in_the_header(tmp_path, capsys):
    (tmp_path / "per_class.csv").write_text("epoch,statistic,class_0\n1,x,3\n")
    (tmp_path / "results.json").write_text("[1, 2]")
    assert per_class_stats.main([str(tmp_path)]) == 0
    assert "| epoch | 0 | sum |" in capsys.readouterr().out


def test_flags_are_checked_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        per_class_stats.main([str(tmp_path), "--epochs", "x"])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and error.count("\n") == 1 and "--epochs" in error


def test_class_series_gives_each_class_its_line_and_no_share_where_an_epoch_has_none():
    values = {3: [2.0, 2.0, 4.0], 1: [0.0, 0.0, 0.0], 2: [1.0, 3.0, 0.0]}
    epochs, series = per_class_stats.class_series(values, share=False)
    assert epochs == [1, 2, 3] and series == [[0.0, 1.0, 2.0], [0.0, 3.0, 2.0], [0.0, 0.0, 4.0]]
    epochs, series = per_class_stats.class_series(values, share=True)
    # Epoch 1 gave no label: no shares (a gap), not 0 %; epoch 2: 1, 3, 0 of 4; epoch 3: 2, 2, 4 of 8.
    assert [[None if math.isnan(v) else v for v in line] for line in series] == [
        [None, 25.0, 25.0], [None, 75.0, 25.0], [None, 0.0, 50.0]]


def test_plot_draws_runs_side_by_side_and_never_replaces_a_file(tmp_path, capsys):
    write_run(tmp_path / "a")
    write_run(tmp_path / "b", epochs=3)
    out = tmp_path / "stats.png"
    assert per_class_stats.main([str(tmp_path / "a"), str(tmp_path / "b"), "--share", "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plot written to {out}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        per_class_stats.main([str(tmp_path / "a"), "--plot", str(out)])
    assert refused.value.code == 2 and f"--plot {out} exists" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "per_class.csv").write_text("epoch,statistic,class_0\n1,other,3\n")
    assert per_class_stats.main([str(tmp_path / "a"), str(tmp_path / "c"), "--stat", "lcsl/counted_labels",
                                 "--plot", str(tmp_path / "other.png")]) == 2
    assert "no statistic lcsl/counted_labels" in capsys.readouterr().err and not (tmp_path / "other.png").exists()
