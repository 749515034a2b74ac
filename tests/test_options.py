"""A method's options are declared once (methods/options.py): every flag reaches the field it
declares, every refusal names the flag, --help shows the value a run uses, and a checkpoint's
recorded options rebuild the same method. Dataset facts come from the registry entry."""
import dataclasses
import re

import pytest

import main as main_script
import train_LCSL as lcsl_script
from datasets import DATASETS, DataOptions, build_dataset, dataset_entry, dataset_name
from methods import METHOD_CLIS, METHODS, build_method
from methods.bccl import BCCLOptions
from methods.erm import ERMOptions
from methods.lcsl import LCSLOptions
from methods.moco import MoCoOptions
from methods.options import MethodOptions, destination
from models import MODELS, build_model
from utils import cli
from utils.config import ConfigError, Number

# The extra flags a method's command needs to be accepted at all.
REQUIRED = {"crt": ["--pretrained_model", "some_run"]}


def another_value(spec: dataclasses.Field):
    """A valid value of the field's flag other than its default (as command-line text)."""
    meta, default = spec.metadata, spec.default
    if meta["convert"] is not None:  # LCSL's --fc_norm: a number whose sign matters
        return "-1", False
    if isinstance(default, bool):
        return str(not default), not default
    if meta["choices"] is not None:
        other = next(c for c in meta["choices"] if c != default)
        return str(other), other
    number: Number = meta["valid"]
    value = default + 1 if number.kind is int else default / 2
    assert number.accepts(value)
    return str(value), value


def flagged_fields(options_class):
    """The fields whose flags the class declares (cRT's inherited ERM flags belong to ERM's group)."""
    return options_class.flagged()


def command_lines():
    """Method command lines that declare flags of their own (a loop over none would check nothing)."""
    return [(name, METHOD_CLIS.get(name)) for name in METHOD_CLIS.names()
            if flagged_fields(METHOD_CLIS.get(name).Options)]


def test_only_rotation_has_no_flags_of_its_own():
    assert [name for name in METHOD_CLIS.names() if not flagged_fields(METHOD_CLIS.get(name).Options)] == ["rotation"]


@pytest.mark.parametrize("name,command_line", command_lines(), ids=[n for n, _ in command_lines()])
def test_every_main_flag_reaches_its_field(name, command_line):
    method = command_line.names[0]
    for spec in flagged_fields(command_line.Options):
        text, value = another_value(spec)
        flag = spec.metadata["flags"][0]
        args = main_script.get_args_parser().parse_args(["--method", method, *REQUIRED.get(name, []), flag, text])
        config, _ = main_script.build_config(args)
        assert config.method_options[spec.name] == value, flag
        untouched = main_script.build_config(main_script.get_args_parser().parse_args(
            ["--method", method, *REQUIRED.get(name, [])]))[0]
        assert untouched.method_options[spec.name] == spec.default, flag


def test_every_lcsl_flag_reaches_its_field():
    for spec in flagged_fields(LCSLOptions):
        text, value = another_value(spec)
        flag = spec.metadata["flags"][0]
        config, _ = lcsl_script.build_config(lcsl_script.get_args_parser().parse_args([flag, text]))
        assert config.method_options[spec.name] == value, flag


@pytest.mark.parametrize("options,flag", [
    (lambda: BCCLOptions(temperature=0.0), "--temp must be a number > 0, got 0.0"),
    (lambda: BCCLOptions(num_centroids=0), "--centroid must be an integer >= 1, got 0"),
    (lambda: BCCLOptions(kmeans_init="kmeans"), "--kmeans_init must be one of random, kmeans++, got 'kmeans'"),
    (lambda: MoCoOptions(queue_size=0), "--moco_k must be an integer >= 1, got 0"),
    (lambda: MoCoOptions(momentum=1.0), "--moco_m must be a number in [0, 1), got 1.0"),
    (lambda: MoCoOptions(mlp=1), "--mlp must be True or False, got 1"),
    (lambda: ERMOptions(train_rule="resample"), "train_rule must be one of none, reweight, drw, got 'resample'"),
    (lambda: ERMOptions(cb_beta=1.0), "--cb_beta must be a number in [0, 1), got 1.0"),
    (lambda: LCSLOptions(threshold=1.5), "--lambda_init must be a number in [0, 1], got 1.5"),
    (lambda: LCSLOptions(select_on="train"), "select_on must be one of val, test, got 'train'"),
])
def test_bad_values_are_refused_naming_the_flag(options, flag):
    with pytest.raises(ConfigError) as refused:
        options()
    assert str(refused.value) == flag


def test_a_method_built_in_code_is_validated_like_a_flag():
    model = build_model("resnet32", 3, head="normed")
    with pytest.raises(ConfigError, match="--temp must be a number > 0"):
        build_method("bccl", model, [5, 3, 1], temperature=-1.0)
    with pytest.raises(TypeError, match="bogus"):
        build_method("bccl", model, [5, 3, 1], bogus=1)


@pytest.mark.parametrize("name", METHODS.names())
def test_recorded_options_rebuild_the_same_method(name):
    head = "normed" if name == "bccl" else "linear"
    method = build_method(name, build_model("resnet32", 3, head=head), [5, 3, 1])
    kwargs = method.init_kwargs
    assert kwargs == dataclasses.asdict(method.Options())  # every field, at its declared default
    again = build_method(name, build_model("resnet32", 3, head=head), [5, 3, 1], **kwargs)
    assert again.options == method.options and isinstance(again.options, MethodOptions)


def test_help_shows_the_defaults_a_run_uses():
    parser = main_script.get_args_parser()
    actions = {flag: action for action in parser._actions for flag in action.option_strings}
    for name, command_line in command_lines():
        for spec in flagged_fields(command_line.Options):
            action = actions[spec.metadata["flags"][0]]
            assert action.default == spec.default and action.help.endswith(f"(default: {spec.default})")
        config, _ = main_script.build_config(main_script.get_args_parser().parse_args(
            ["--method", command_line.names[0], *REQUIRED.get(name, [])]))
        recipe = command_line.recipe
        assert (config.optim.lr, config.optim.weight_decay, config.batch_size, config.run.seed) == \
            (recipe.lr, recipe.weight_decay, recipe.batch_size, recipe.seed)
        for flag, value in (("--lr", recipe.lr), ("--wd", recipe.weight_decay), ("--epochs", recipe.epochs)):
            assert re.search(rf"[:;] {re.escape(str(value))} \([^)]*\b{name}\b", actions[flag].help), flag
    lcsl_help = " ".join(lcsl_script.get_args_parser().format_help().split())
    assert "learning rate of the global batch (default: 0.01)" in lcsl_help
    assert "--fc_norm FC_NORM > 0: L2-normalise the teacher's classifier rows each epoch (only the sign " \
           "matters) (default: 1.9)" in lcsl_help
    # Every option with a fixed default says it, in each entry script's help (a None default is
    # chosen elsewhere, by the method or the dataset, and its help says by what).
    import test as test_script

    for script in (main_script, lcsl_script, test_script):
        entries, lines = {}, script.get_args_parser().format_help().split("\noptions:", 1)[1].splitlines()
        for line in lines:  # an entry starts with its flags, indented by two spaces
            if re.match(r"^  -", line):
                flags = re.findall(r"(?:^|, )(-[-\w]+)", line.split("  ", 2)[1])
                entry = entries.setdefault(flags[0], [])
            elif line.startswith("    ") and entries:
                entry.append(line)
            if re.match(r"^  -", line):
                entry.append(line)
        for action in script.get_args_parser()._actions:
            if action.option_strings and action.nargs != 0 and action.default not in (None, [], ()):
                assert "default" in " ".join(entries[action.option_strings[0]]), (script.__name__, action.option_strings)
    main_help = " ".join(main_script.get_args_parser().format_help().split())
    assert "1 / imbalance ratio, in (0, 1] (default: 0.01)" in main_help
    assert "parent folder of run folders (default: log)" in main_help


def test_destination_is_the_first_flag():
    assert destination("--moco-k") == "moco_k" and destination("--temp") == "temp"


# ---- dataset facts ---------------------------------------------------------------------------------
# (image style, the papers' backbone, own validation list, the papers' other spellings)
DATASET_FACTS = {
    "cifar10": ("cifar", "resnet32", False, ()), "cifar100": ("cifar", "resnet32", False, ()),
    "cifar10_sample": ("cifar", "resnet32", False, ()), "svhn": ("cifar", "resnet32", False, ()),
    "imagenet_lt": ("imagenet", "resnext50", True, ("imagenet",)),
    "inat2018": ("imagenet", "resnet50", False, ("inat", "inaturalist")),
    "places_lt": ("imagenet", None, True, ()), "image_list": ("imagenet", None, False, ()),
}


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_declares_its_facts(name):
    entry = dataset_entry(name)
    assert (entry.image_style, entry.default_arch, entry.ships_val_list, entry.aliases) == DATASET_FACTS[name]
    assert entry.default_arch is None or entry.default_arch in MODELS.names()
    for alias in entry.aliases:
        assert dataset_name(alias) == name


def test_every_dataset_has_its_facts_listed():
    assert sorted(DATASET_FACTS) == sorted(DATASETS.names())


def test_the_built_data_agrees_with_its_entry():
    data = build_dataset("cifar10_sample", DataOptions(imb_factor=0.1))  # the bundled sample
    assert data.style == dataset_entry("cifar10_sample").image_style == "cifar"


def test_the_backbone_comes_from_the_dataset_unless_given():
    parse = main_script.get_args_parser().parse_args
    assert cli.architecture(parse(["--dataset", "imagenet_lt"])) == "resnext50"
    assert cli.architecture(parse(["--dataset", "cifar100"])) == "resnet32"
    assert cli.architecture(parse(["--dataset", "imagenet_lt", "--arch", "resnet50"])) == "resnet50"
    with pytest.raises(ConfigError, match="--dataset places_lt has no standard backbone: pass --arch"):
        cli.architecture(parse(["--dataset", "places_lt"]))


def test_a_run_saved_before_an_option_was_declared_still_matches_its_command():
    """config.json of an older version lacks the options added since (LCSL's mixup_alpha, cRT's
    inherited ERM fields): --resume must still accept it, and still refuse a changed option."""
    from utils.run_folder import config_differences

    lcsl, _ = lcsl_script.build_config(lcsl_script.get_args_parser().parse_args([]))
    saved = lcsl.to_dict()
    del saved["method_options"]["mixup_alpha"]
    assert config_differences(lcsl, saved) == []
    saved["method_options"]["alpha"] = 0.0
    assert config_differences(lcsl, saved) == [("--alpha", 0.0, 1.0)]  # named by its flag
    crt, _ = main_script.build_config(main_script.get_args_parser().parse_args(["--method", "crt", *REQUIRED["crt"]]))
    old_crt = {**crt.to_dict(), "method_options": {"update_bn": False}}
    assert config_differences(crt, old_crt) == []


def test_configuration_messages_name_the_flag_behind_a_field():
    import methods  # noqa: F401  (registering the methods fills the table of their flags)
    from utils.config import flag_of

    assert flag_of("lcsl", "method_options.threshold") == "--lambda_init"
    assert flag_of("bccl", "method_options.temperature") == "--temp"
    assert flag_of("erm", "optim.weight_decay") == "--wd/--weight_decay"
    assert flag_of("erm", "data.imb_factor") == "--imb_factor" and flag_of("erm", "run.seed") == "--seed"
    assert flag_of("erm", "optim.cosine") == "--cos" and flag_of("erm", "train_aug") == "--aug"
    assert flag_of("erm", "method_options.loss") == "--loss_type" and flag_of("erm", "method") == "method"
    assert flag_of("erm", "aug_options") == "aug_options"  # several flags set it: the field itself
    assert flag_of("erm", "head") == "head"  # --use_norm True sets 'normed': the field as stored


@pytest.mark.parametrize("script, argv", [(main_script, ["--method", "ldam_drw"]), (main_script, []),
                                          (main_script, ["--method", "moco"]), (lcsl_script, [])])
def test_every_configuration_field_a_flag_sets_is_named_by_a_flag_of_its_script(script, argv):
    # Fields that no single flag sets (derived from --method or from other options, or several
    # flags at once) are named by the field itself; every other one must name a real flag.
    import json

    import methods  # noqa: F401
    from utils.config import flag_of
    from utils.run_folder import _flatten

    parser = script.get_args_parser()
    flags = {option for action in parser._actions for option in action.option_strings}
    config, _ = script.build_config(parser.parse_args(argv))
    derived = {"script", "method", "head", "aug_options", "sampler_options", "drop_last", "method_options.loss_options",
               "method_options.arch", "method_options.select_on", "method_options.mixup_alpha",
               "method_options.warmup_epochs", "method_options.seed"}
    if script is lcsl_script:  # the fields train_LCSL.py fixes (one method, no sampler, no post-hoc tau)
        derived |= {"sampler", "eval_posthoc_tau"}
    for (group, key) in _flatten(json.loads(json.dumps(config.to_dict()))):
        field = f"{group}.{key}" if group else key
        if field not in derived:
            assert set(flag_of(config.method, field).split("/")) & flags, field
