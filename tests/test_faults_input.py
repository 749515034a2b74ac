"""Bad input is one line on stderr, exit code 2, and nothing written (no half-made run folder).

The numeric-flag tests are generated from the entry scripts' own parsers, so a flag added later
without a declared range fails here instead of reaching a traceback minutes into a run.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import dataset_stats  # noqa: E402
import gen_pseudolabels  # noqa: E402
import main as main_script  # noqa: E402
import make_table  # noqa: E402
import test as test_script  # noqa: E402
import train_LCSL  # noqa: E402
from datasets import DataOptions, DatasetError, build_dataset  # noqa: E402
from datasets.longtail import class_counts, smallest_imb_factor  # noqa: E402
from utils import cli  # noqa: E402
from utils.config import ConfigError, Number, OptimConfig, RunConfig, TrainConfig  # noqa: E402

# Every parser with numeric flags, and the arguments it requires besides them.
PARSERS = {
    "main.py": (main_script.get_args_parser, []),
    "train_LCSL.py": (train_LCSL.get_args_parser, []),
    "test.py": (test_script.get_args_parser, ["--path", "run"]),
    "dataset_stats.py": (dataset_stats.get_args_parser, ["--dataset", "cifar10_sample"]),
    "gen_pseudolabels.py": (gen_pseudolabels.get_args_parser, ["--path", "run", "--pool", "leftover",
                                                               "--out", "labels.npz"]),
}


def refused(parser_factory, argv, capsys) -> str:
    """Parses argv, expects the one-line exit-2 refusal, returns that line."""
    with pytest.raises(SystemExit) as stop:
        parser_factory().parse_args(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def out_of_range(number: Number):
    """Values just outside the declared range, plus the non-finite ones for float flags."""
    values = ["nan", "inf", "-inf"] if number.kind is float else ["1.5", "x"]
    if number.low is not None:
        values.append(str(number.low if number.low_open else number.low - 1))
    if number.high is not None:
        values.append(str(number.high if number.high_open else number.high + 1))
    return values


def numeric_flags():
    for script, (factory, required) in PARSERS.items():
        for action in factory()._actions:
            if isinstance(action.type, Number):
                for value in out_of_range(action.type):
                    yield pytest.param(script, action.option_strings[-1], value,
                                       id=f"{script}{action.option_strings[-1]}={value}")


@pytest.mark.parametrize("script", sorted(PARSERS))
def test_every_numeric_flag_declares_its_range(script):
    """A bare type=int/float (or a numeric default parsed as a string) has no range check."""
    factory, _ = PARSERS[script]
    bare = [action.option_strings for action in factory()._actions
            if action.nargs != 0 and action.option_strings and not isinstance(action.type, Number)
            and (action.type in (int, float) or (action.type is None and isinstance(action.default, (int, float))
                                                 and not isinstance(action.default, bool)))]
    assert bare == []


@pytest.mark.parametrize("script,flag,value", list(numeric_flags()))
def test_every_numeric_flag_refuses_values_outside_its_range(script, flag, value, capsys):
    factory, required = PARSERS[script]
    line = refused(factory, required + [f"{flag}={value}"], capsys)
    assert f": error: argument {flag}: expected " in line and f"got '{value}'" in line


# The values a user actually sent (issue list), each named as it was typed.
ISSUE_CASES = [
    ("--temp", "0"), ("--queue_size", "0"), ("--feat_dim", "0"), ("--kmeans_every", "0"), ("--focal_gamma", "-1"),
    ("--ldam_scale", "0"), ("--head_scale", "0"), ("--cb_beta", "1"), ("--samples_per_class", "0"),
    ("--drw_epoch", "-1"), ("--randaug_n", "-1"), ("--seed", "-1"), ("--momentum", "-1"), ("--lr", "nan"),
    ("--lr", "inf"), ("--log_interval", "0"), ("--imb_factor", "0"), ("--imb_factor", "1.5"), ("--epochs", "0"),
    ("-b", "0"), ("--batch-size", "0"), ("--learning-rate", "nan"), ("--wd", "-0.001"), ("--weight-decay", "nan"),
    ("--moco-k", "0"), ("--moco_m", "1"), ("--la_tau", "nan"), ("--posthoc_tau", "-1"), ("--seed", "4294967296"),
    ("--randaug_m", "11"), ("--schedule", "-5"),
]


@pytest.mark.parametrize("flag,value", ISSUE_CASES, ids=[f"{f}={v}" for f, v in ISSUE_CASES])
def test_main_names_the_flag_as_typed(flag, value, capsys):
    line = refused(main_script.get_args_parser, ["--dataset", "cifar10_sample", flag, value], capsys)
    assert f": error: argument {flag}: expected " in line and f"got '{value}'" in line


@pytest.mark.parametrize("argv,flag", [
    (["--tau", "0"], "--tau"), (["--lambda_init", "1.5"], "--lambda_init"), (["--alpha", "-1"], "--alpha"),
    (["--start_epoch", "0"], "--start_epoch"), (["--tau_norm", "nan"], "--tau_norm"), (["--fc_norm", "inf"], "--fc_norm"),
    (["-b0"], "-b"), (["--batch_size=0"], "--batch_size"), (["--lr", "0"], "--lr"),
])
def test_train_lcsl_names_the_flag_as_typed(argv, flag, capsys):
    assert f"argument {flag}: expected" in refused(train_LCSL.get_args_parser, argv, capsys)


def test_configs_built_in_code_are_checked_too():
    """Configs also come from saved config.json files and from code: the same ranges apply."""
    with pytest.raises(ConfigError, match=r"--lr must be a number > 0, got nan"):
        OptimConfig(lr=float("nan"))
    with pytest.raises(ConfigError, match=r"--momentum must be a number in \[0, 1\), got 1"):
        OptimConfig(momentum=1.0)
    with pytest.raises(ConfigError, match="--schedule"):
        OptimConfig(milestones=(-1,))
    # A step schedule out of order, or decaying inside the warm-up, is refused before training
    # (utils.schedule would refuse it at the first epoch, with a run folder already made).
    with pytest.raises(ConfigError, match="^--schedule must list increasing epochs, got 180 160: use --schedule 160 180$"):
        OptimConfig(milestones=(180, 160))
    with pytest.raises(ConfigError, match="--schedule 2 decays the lr inside the 5 warm-up epochs"):
        OptimConfig(milestones=(2,), warmup_epochs=5)
    assert OptimConfig(milestones=(180, 160), cosine=True).cosine  # unused by the cosine schedule
    with pytest.raises(ConfigError, match="--log_interval must be an integer >= 1, got 0"):
        RunConfig(log_interval=0)
    config, _ = main_script.build_config(main_script.get_args_parser().parse_args(["--method", "ce"]))
    saved = json.loads(json.dumps(config.to_dict()))
    assert TrainConfig.from_dict(saved) == config
    saved["batch_size"] = 0
    with pytest.raises(ConfigError, match="-b/--batch_size must be an integer >= 1, got 0"):
        TrainConfig.from_dict(saved)


# ---- values that only the data can refute, checked before any file is written -----------------
def run_entry(module, argv, capsys):
    """The entry script's real path: parse, build, train (guarded); returns (code, stderr line)."""
    args = module.get_args_parser().parse_args(argv)
    code = cli.run_guarded(module.__name__, lambda: module.main(args))
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return code, err


@pytest.mark.parametrize("method", ["ce", "ldam_drw", "logit_adjust", "cb_reweight", "balanced_softmax", "bccl",
                                    "lcsl"])
def test_an_empty_class_is_refused_for_every_method(method, cifar10_root, tmp_path, capsys):
    # 40 training images per class: --imb_factor 0.02 leaves the tail int(40 * 0.02) = 0.
    logs = tmp_path / "log"
    common = ["--dataset", "cifar10", "--data_root", cifar10_root.root, "--download", "False", "--epochs", "1",
              "--imb_factor", "0.02", "--root_log", str(logs), "--workers", "0"]
    if method == "lcsl":
        code, err = run_entry(train_LCSL, common, capsys)
    else:
        code, err = run_entry(main_script, common + ["--method", method], capsys)
    assert code == 2
    assert "--imb_factor 0.02 leaves class 9 (class_09) with 0 training images" in err
    assert "use --imb_factor >= 0.025" in err
    assert not logs.exists()
    assert min(class_counts(40, 10, "exp", 0.025)) == 1  # the advice is right


@pytest.mark.parametrize("method", ["bccl", "moco"])
def test_a_drop_last_batch_larger_than_the_training_set_is_refused(method, cifar10_root, tmp_path, capsys):
    logs = tmp_path / "log"
    total = sum(class_counts(40, 10, "exp", 0.1))
    code, err = run_entry(main_script, ["--method", method, "--dataset", "cifar10", "--data_root", cifar10_root.root,
                                        "--download", "False", "--imb_factor", "0.1", "-b", str(total + 1),
                                        "--epochs", "1", "--root_log", str(logs), "--workers", "0"], capsys)
    assert code == 2 and not logs.exists()
    assert f"-b/--batch_size {total + 1} is larger than the {total} training images" in err
    assert f"use -b/--batch_size {total} or less" in err


@pytest.mark.parametrize("n_max,num_classes,imb_type", [(5000, 10, "exp"), (500, 100, "exp"), (40, 10, "exp"),
                                                         (3, 10, "exp"), (1000, 10, "step"), (1280, 1000, "exp")])
def test_smallest_imb_factor_is_the_smallest_printed_value_that_works(n_max, num_classes, imb_type):
    factor = smallest_imb_factor(n_max, num_classes, imb_type)
    assert min(class_counts(n_max, num_classes, imb_type, factor)) == 1
    assert float(f"{factor:.3g}") == factor  # three significant digits: what a user types
    digits = 10.0 ** (np.floor(np.log10(factor)) - 2)
    assert min(class_counts(n_max, num_classes, imb_type, factor - digits)) == 0


# ---- list files --------------------------------------------------------------------------------
@pytest.mark.parametrize("content,fragment", [
    ("train/c0/0.png 0\ntrain/c1/0.png 1\n".encode("utf-16"), ":1: UTF-16 text"),
    ("train/c0/0.png 0\n".encode("utf-16-le"), ":1: the line holds NUL bytes"),
    ("train/c0/0.png 0\ntrain/caf\xe9/0.png 1\n".encode("latin-1"), ":2: byte 0xe9 at column 10 is not UTF-8"),
    (b"train/c0/0.png 0\ntrain/c1/0.png 1.5\n", ":2: expected 'relative/path label' with an integer label"),
    (b"train/c0/0.png 0\n\ntrain/c1/0.png cat\n", ":3: expected 'relative/path label'"),
    ("train/c0/0.png 0\ntrain/c1/0.png \u00b2\n".encode(), ":2: expected 'relative/path label'"),
], ids=["utf16", "utf16-without-bom", "latin1", "float-label", "word-label", "superscript-label"])
def test_bad_list_files_name_the_file_and_line(imagenet_lt_lists, content, fragment):
    path = os.path.join(imagenet_lt_lists.split_dir, "ImageNet_LT_train.txt")
    with open(path, "wb") as handle:
        handle.write(content)
    options = DataOptions(data_root=imagenet_lt_lists.data_root, split_dir=imagenet_lt_lists.split_dir)
    with pytest.raises(DatasetError) as error:
        build_dataset("imagenet_lt", options)
    assert str(error.value).startswith(path + ":") and fragment in str(error.value)
    assert "\n" not in str(error.value)


def test_a_utf8_byte_order_mark_is_accepted(imagenet_lt_lists):
    path = os.path.join(imagenet_lt_lists.split_dir, "ImageNet_LT_train.txt")
    with open(path, "rb") as handle:
        content = handle.read()
    with open(path, "wb") as handle:
        handle.write(b"\xef\xbb\xbf" + content.replace(b"\n", b"\r\n"))
    options = DataOptions(data_root=imagenet_lt_lists.data_root, split_dir=imagenet_lt_lists.split_dir)
    assert build_dataset("imagenet_lt", options).train_counts == [5, 3, 1]


# ---- output files --------------------------------------------------------------------------------
@pytest.mark.parametrize("script,argv", [
    ("test.py", ["--path", "run", "--plot", "{missing}/per_class.png"]),
    ("test.py", ["--path", "run", "--json", "{missing}/eval.json"]),
    ("dataset_stats.py", ["--dataset", "cifar10_sample", "--plot", "{missing}/counts.png"]),
    ("gen_pseudolabels.py", ["--path", "run", "--pool", "leftover", "--out", "{missing}/labels.npz"]),
])
def test_an_output_file_in_a_missing_folder_is_refused_at_parse_time(script, argv, tmp_path, capsys):
    missing = tmp_path / "no" / "such"
    line = refused(PARSERS[script][0], [a.format(missing=missing) for a in argv], capsys)
    assert f"the folder {missing} does not exist" in line and not missing.exists()


@pytest.mark.parametrize("script,argv", [
    ("test.py", ["--path", "run", "--plot", "{old}"]),
    ("test.py", ["--path", "run", "--json", "{old}"]),
    ("dataset_stats.py", ["--dataset", "cifar10_sample", "--plot", "{old}"]),
    ("gen_pseudolabels.py", ["--path", "run", "--pool", "leftover", "--out", "{old}"]),
    ("make_table.py", ["runs", "--out", "{old}"]),
    ("make_table.py", ["runs", "--plot", "{old}"]),
])
def test_an_existing_output_file_is_refused_unless_force(script, argv, tmp_path, capsys):
    """A run's results.json given as --json (or a table as --out) must not be replaced silently."""
    old = tmp_path / ("figure.png" if "--plot" in argv else "results.json")
    old.write_text('{"kept": true}')
    factory = PARSERS[script][0] if script in PARSERS else make_table.get_args_parser
    typed = [a.format(old=old) for a in argv]
    line = refused(factory, typed, capsys)
    assert f"{old} exists: choose another path, or pass --force to replace it" in line
    assert old.read_text() == '{"kept": true}'
    assert factory().parse_args([*typed, "--force"]).force


@pytest.mark.parametrize("script,argv", [
    ("test.py", ["--path", "run", "--plot", "{folder}/per_class.foo"]),
    ("dataset_stats.py", ["--dataset", "cifar10_sample", "--plot", "{folder}/counts"]),
    ("make_table.py", ["runs", "--plot", "{folder}/table.txt"]),
])
def test_a_figure_whose_extension_names_no_format_is_refused_before_the_work(script, argv, tmp_path, capsys):
    factory = PARSERS[script][0] if script in PARSERS else make_table.get_args_parser
    line = refused(factory, [a.format(folder=tmp_path) for a in argv], capsys)
    assert "the figure's format comes from its extension; end the name in .png, .pdf or .svg" in line


def test_an_output_path_that_is_a_folder_is_refused(tmp_path, capsys):
    line = refused(test_script.get_args_parser, ["--path", "run", "--json", str(tmp_path)], capsys)
    assert f"{tmp_path} is a folder" in line


# ---- make_table ---------------------------------------------------------------------------------
def write_result(folder, **overrides):
    os.makedirs(folder, exist_ok=True)
    result = {"dataset": "cifar10", "imb_factor": 0.01, "label": "ce", "arch": "resnet32", "train_counts": [50, 5],
              "last": {"top1": 60.0, "per_class": [70.0, 50.0]}, "best_on_test": {"top1": 61.0}, **overrides}
    with open(os.path.join(folder, "results.json"), "w") as stream:
        json.dump(result, stream)


def test_make_table_skips_broken_results_and_lists_unfinished_runs(tmp_path, capsys):
    write_result(str(tmp_path / "good_s0"))
    write_result(str(tmp_path / "good_s1"), last={"top1": 64.0, "per_class": [70.0, 58.0]})
    broken = {"invalid": '{"dataset": "cifar10", "last": ', "list": "[1, 2]", "nokey": '{"dataset": "cifar10"}',
              "badtype": json.dumps({"dataset": "cifar10", "last": {"top1": "high"}}), "latin1": b'{"x": "\xe9"}',
              "nan": json.dumps({"dataset": "cifar10", "last": {"top1": float("nan")}}),
              "dataset_list": json.dumps({"dataset": ["x"], "last": {"top1": 1.0}}),
              "label_int": json.dumps({"dataset": "cifar10", "label": 5, "last": {"top1": 1.0}}),
              "tiny_factor": json.dumps({"dataset": "cifar10", "imb_factor": 5e-324, "last": {"top1": 1.0}})}
    for name, content in broken.items():
        os.makedirs(tmp_path / name)
        mode = "wb" if isinstance(content, bytes) else "w"
        with open(tmp_path / name / "results.json", mode) as stream:
            stream.write(content)
    for name, marker in (("running", "last.pth"), ("starting", "config.json")):
        os.makedirs(tmp_path / name)
        (tmp_path / name / marker).write_text("{}")
    out = tmp_path / "table.md"
    assert make_table.main([str(tmp_path), "--out", str(out), "--plot", str(tmp_path / "p.png")]) == 0
    captured = capsys.readouterr()
    # Both good seeds are averaged; the broken files are named on stderr, one warning each.
    assert "| cifar10 | 100 | ce | resnet32 | 2 | 62.00 ± 2.83 |" in captured.out
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == len(broken)
    for name, why in (("invalid", "invalid JSON (line 1"), ("list", "expected a JSON object, got list"),
                      ("nokey", "missing key 'last'"), ("badtype", "'last.top1' must be a finite number"),
                      ("latin1", "not UTF-8"), ("nan", "'last.top1' must be a finite number"),
                      ("dataset_list", "'dataset' must be a string, got list"),
                      ("label_int", "'label' must be a string, got int"),
                      ("tiny_factor", "'imb_factor' must lie in [1e-9, 1]")):
        assert any(str(tmp_path / name / "results.json") in w and why in w for w in warnings), (name, warnings)
    assert "Unfinished runs (no results.json yet), not in the table: 2" in captured.out
    assert f"- {tmp_path / 'running'} (last.pth)" in captured.out
    assert f"- {tmp_path / 'starting'} (config.json)" in captured.out
    assert out.read_text() == captured.out  # --out holds what was printed
    assert os.path.getsize(tmp_path / "p.png") > 0


def test_make_table_with_nothing_readable_is_one_error_line(tmp_path, capsys):
    os.makedirs(tmp_path / "run")
    (tmp_path / "run" / "config.json").write_text("{}")
    assert make_table.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no readable results.json" in err and "1 unfinished run(s)" in err


def test_make_table_out_in_a_missing_folder_is_refused(tmp_path, capsys):
    write_result(str(tmp_path / "run"))
    with pytest.raises(SystemExit) as stop:
        make_table.main([str(tmp_path), "--out", str(tmp_path / "missing" / "t.md")])
    assert stop.value.code == 2
    assert f"the folder {tmp_path / 'missing'} does not exist" in capsys.readouterr().err


# ---- the real processes (a few; importing the entry scripts costs seconds) -------------------------
def run_script(*argv, cwd):
    return subprocess.run([sys.executable, os.path.join(ROOT, argv[0]), *argv[1:]], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})


def test_main_process_refuses_bad_values_without_a_run_folder(tmp_path):
    for argv, fragment in ((["--log_interval", "0"], "argument --log_interval: expected an integer >= 1, got '0'"),
                           (["--imb_factor", "0.001"], "leaves class 9 (truck) with 0 training images"),
                           (["--amp", "fp16"], "--amp fp16 needs a CUDA device (its loss scaling runs there), "
                                               "but this run trains on the cpu: use --amp bf16, none or auto")):
        result = run_script("main.py", "--dataset", "cifar10_sample", "--method", "ce", "--epochs", "1",
                            "--workers", "0", *argv, cwd=tmp_path)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-2000:]
        assert fragment in result.stderr
    assert os.listdir(tmp_path) == []  # no log/ folder, no run folder


def test_list_file_error_through_the_entry_point(imagenet_lt_lists, tmp_path):
    path = os.path.join(imagenet_lt_lists.split_dir, "ImageNet_LT_test.txt")
    with open(path, "ab") as handle:
        handle.write("test/caf\xe9/0.png 1\n".encode("latin-1"))
    runs = tmp_path / "runs"
    result = run_script("main.py", "--dataset", "imagenet_lt", "--method", "ce", "--data_root",
                        imagenet_lt_lists.data_root, "--split_dir", imagenet_lt_lists.split_dir, "--arch", "resnet32",
                        "--epochs", "1", "--workers", "0", "--root_log", str(runs), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert f"{path}:7: byte 0xe9" in result.stderr
    assert not runs.exists()
