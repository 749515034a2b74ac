"""Command-line parsing: the papers' spellings, real booleans, and contradictions as errors."""
import os
import subprocess
import sys
import time

import pytest

import main as main_script
from utils.config import ConfigError, str2bool


def parse(*argv):
    return main_script.get_args_parser().parse_args(list(argv))


@pytest.mark.parametrize("text,value", [("True", True), ("False", False), ("false", False), ("1", True),
                                        ("0", False), ("yes", True), ("no", False)])
def test_str2bool(text, value):
    assert str2bool(text) is value


def test_booleans_are_parsed_not_truthy():
    args = parse("--cos", "False", "--use-norm", "False")
    assert args.cos is False and args.use_norm is False
    assert parse("--cos").cos is True
    assert parse("--cos", "True").cos is True


def test_paper_spellings_are_aliases():
    args = parse("-b", "64", "--wd", "5e-4", "--use-norm", "True", "--tb_save", "--gpu", "0")
    assert (args.batch_size, args.weight_decay, args.use_norm, args.gpu) == (64, 5e-4, True, "0")
    assert parse("--batch-size", "32").batch_size == 32
    assert parse("--weight_decay", "1e-3").weight_decay == 1e-3
    assert parse("--use_norm", "True").use_norm is True


def test_a_tilde_in_a_path_flag_is_the_home_folder(monkeypatch, tmp_path):
    # The shell leaves --data_root=~/data as typed; torchvision would expand it and download into
    # the home folder while the toolkit looked in ./~/data.
    monkeypatch.setenv("HOME", str(tmp_path))
    args = parse("--data_root=~/data", "--split_dir=~/lists", "--val_list=~/v.txt", "--out_dir=~/runs/a",
                 "--resume=~/runs/a", "--pretrained_model=~/ssp.pth", "--unlabeled=~/pseudo.npz")
    home = str(tmp_path)
    assert (args.data_root, args.split_dir, args.val_list, args.out_dir, args.resume, args.pretrained_model,
            args.unlabeled) == tuple(os.path.join(home, name) for name in
                                     ("data", "lists", "v.txt", "runs/a", "runs/a", "ssp.pth", "pseudo.npz"))
    assert parse("--resume", "auto").resume == "auto" and parse().data_root == "./data"
    import test as test_script

    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    import gen_pseudolabels

    assert test_script.get_args_parser().parse_args(["--path=~/runs/a", "--data=~/data"]).data_root == home + "/data"
    pool = gen_pseudolabels.get_args_parser().parse_args(["--path", "~/r", "--pool=~/ti.pickle", "--out=~/p.npz"])
    assert (pool.path, pool.pool, pool.out) == (home + "/r", home + "/ti.pickle", home + "/p.npz")


def test_semi_self_flags_compose_the_method():
    config, label = main_script.build_config(parse("--loss_type", "LDAM", "--train_rule", "DRW"))
    assert config.method == "erm"
    assert config.method_options["loss"] == "ldam" and config.method_options["train_rule"] == "drw"
    assert config.head == "normed" and config.head_scale == 1.0  # LDAM's loss applies s=30
    config, _ = main_script.build_config(parse("--loss_type", "CE", "--train_rule", "Resample"))
    assert config.sampler == "effective_number" and config.method_options["train_rule"] == "none"
    config, _ = main_script.build_config(parse("--loss_type", "Focal", "--train_rule", "Reweight"))
    assert config.method_options["loss"] == "focal" and config.method_options["train_rule"] == "reweight"


def test_cifar_long_tail_flags_are_refused_on_list_datasets():
    with pytest.raises(ConfigError, match="--imb_factor: shapes the long tail cut from CIFAR-style datasets; "
                                          "imagenet_lt's long tail is its training list: drop it"):
        main_script.build_config(parse("--dataset", "imagenet_lt", "--imb_factor", "0.1"))
    with pytest.raises(ConfigError, match="^--imb_type --lt_selection --lt_seed: shape .* drop them"):
        main_script.build_config(parse("--dataset", "inat", "--imb_type", "step", "--lt_selection", "first",
                                       "--lt_seed", "3"))
    config, _ = main_script.build_config(parse("--dataset", "places_lt", "--arch", "resnet50"))
    assert config.dataset == "places_lt"
    config, _ = main_script.build_config(parse("--dataset", "cifar100", "--imb_factor", "0.1", "--lt_seed", "3"))
    assert (config.data.imb_factor, config.data.lt_seed) == (0.1, 3)


def test_recipe_defaults_follow_the_semi_self_code():
    config, _ = main_script.build_config(parse("--method", "ce"))
    optim = config.optim
    assert (optim.lr, optim.weight_decay, optim.warmup_epochs, optim.milestones, optim.gamma, optim.cosine) == \
        (0.1, 2e-4, 5, (160, 180), 0.01, False)
    assert config.batch_size == 128 and config.select_on is None  # resolved from the data at run time


@pytest.mark.parametrize("argv,fragment", [
    (("--method", "ldam_drw", "--loss_type", "CE"), "--loss_type"),
    (("--method", "ce", "--train_rule", "DRW"), "--train_rule"),
    (("--train_rule", "Resample", "--sampler", "class_aware"), "--sampler"),
    (("--method", "ldam", "--use_norm", "False"), "--use_norm"),
    (("--method", "bccl", "--sampler", "class_balanced"), "--sampler"),
    (("--method", "rotation", "--train_rule", "DRW"), "--train_rule"),
])
def test_contradictions_are_config_errors(argv, fragment):
    with pytest.raises(ConfigError, match=fragment):
        main_script.build_config(parse(*argv))


def test_unknown_flag_is_one_line_exit_2():
    result = subprocess.run([sys.executable, "main.py", "--no_such_flag", "1"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--no_such_flag" in result.stderr


def test_ctrl_c_and_sigterm_are_one_line_and_the_handler_is_restored(capsys):
    import signal as signals

    from utils.cli import run_guarded

    def interrupted():
        raise KeyboardInterrupt

    before = signals.getsignal(signals.SIGTERM)
    assert run_guarded("main.py", interrupted, trains=True) == 130
    assert capsys.readouterr().err == "main.py: interrupted; continue with --resume auto (or the run's last.pth)\n"
    assert run_guarded("test.py", lambda: os.kill(os.getpid(), signals.SIGTERM) or time.sleep(30)) == 143
    assert capsys.readouterr().err == "test.py: terminated (SIGTERM)\n"  # nothing to resume in test.py
    assert signals.getsignal(signals.SIGTERM) is before


# --method shorthand -> (loss, train rule, sampler, head, label): the README's baseline table.
ERM_PRESETS = {
    "ce": ("ce", "none", None, "linear", "ce"),
    "focal": ("focal", "none", None, "linear", "focal"),
    "ldam": ("ldam", "none", None, "normed", "ldam"),
    "ldam_drw": ("ldam", "drw", None, "normed", "ldam_drw"),
    "cb_reweight": ("ce", "reweight", None, "linear", "cb_reweight"),
    "drw": ("ce", "drw", None, "linear", "drw"),
    "resample": ("ce", "none", "effective_number", "linear", "resample"),
    "balanced_sampling": ("ce", "none", "class_balanced", "linear", "balanced_sampling"),
    "logit_adjust": ("logit_adjust", "none", None, "linear", "logit_adjust"),
    "balanced_softmax": ("balanced_softmax", "none", None, "linear", "balanced_softmax"),
}


@pytest.mark.parametrize("method", sorted(ERM_PRESETS))
def test_each_erm_shorthand_trains_what_the_readme_says(method):
    from methods.erm import PRESETS

    assert sorted(PRESETS) == sorted(ERM_PRESETS)
    config, label = main_script.build_config(parse("--method", method))
    assert config.method == "erm"
    assert (config.method_options["loss"], config.method_options["train_rule"], config.sampler, config.head,
            label) == ERM_PRESETS[method]


def test_moco_trains_on_two_moco_v2_views():
    from methods import METHODS

    config, _ = main_script.build_config(parse("--method", "moco"))
    assert config.train_aug == ("moco_v2",) and METHODS.get("moco").num_views == 2  # one recipe, every view
