"""The layers of README's Layout, enforced: a lower layer never imports a higher one.

    entry scripts (main.py, train_LCSL.py, test.py, scripts/)        nothing imports them
    orchestration (utils.run, utils.training, utils.report, utils.runner)
    methods/, command line (utils.cli: flags methods declare)         no run
    engine (utils.engine, utils.evaluation)                           the engine never names a method
    datasets/, models/, losses/                                       no method, engine or run
    base utilities (utils.config, utils.dist, utils.checkpoint, utils.metrics, ...)
        none of the above, except the configuration's data field: datasets.base.DataOptions
"""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_SCRIPTS = {"main", "test", "train_LCSL"}
ORCHESTRATION = {"utils.run", "utils.training", "utils.report", "utils.runner"}
ENGINE = {"utils.engine", "utils.evaluation"}
COMMAND_LINE = {"utils.cli"}
# utils.config's TrainConfig holds the datasets' own option type (imported lazily).
BASE_MAY_IMPORT = {"datasets.base", "datasets.base.DataOptions"}


def module_files():
    for folder in ("datasets", "models", "losses", "methods", "utils", "scripts"):
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(base, name)
                    module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                    yield module, path


def imported_modules(path):
    """Every module an import statement in the file names (also those inside functions)."""
    package = os.path.relpath(os.path.dirname(path), ROOT).replace(os.sep, ".")
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y / from . import y
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def within(name, modules):
    return any(name == m or name.startswith(m + ".") for m in modules)


def forbidden(module):
    top = module.split(".")[0]
    if top == "utils" and not within(module, ORCHESTRATION | ENGINE | COMMAND_LINE):  # base utilities
        return lambda name: name not in BASE_MAY_IMPORT and (
            name.split(".")[0] in ("datasets", "models", "losses", "methods", "scripts", *ENTRY_SCRIPTS)
            or within(name, ORCHESTRATION | ENGINE | COMMAND_LINE))
    if top == "methods" or module in COMMAND_LINE:
        return lambda name: name.split(".")[0] in ("scripts", *ENTRY_SCRIPTS) or within(name, ORCHESTRATION) or (
            module in COMMAND_LINE and name.split(".")[0] == "methods")
    if top in ("datasets", "models", "losses"):
        return lambda name: (name.split(".")[0] in ("methods", "scripts", *ENTRY_SCRIPTS)
                             or within(name, ORCHESTRATION | ENGINE | COMMAND_LINE))
    if module in ENGINE:
        return lambda name: (name.split(".")[0] in ("methods", "scripts", *ENTRY_SCRIPTS)
                             or within(name, ORCHESTRATION | COMMAND_LINE))
    if top == "scripts":
        return lambda name: name in ENTRY_SCRIPTS
    return lambda name: name.split(".")[0] in ENTRY_SCRIPTS or (top != "scripts" and name.startswith("scripts."))


@pytest.mark.parametrize("module,path", sorted(module_files()), ids=lambda v: v if "." in v and "/" not in v else "")
def test_no_module_imports_upward(module, path):
    rule = forbidden(module)
    upward = sorted({name for name in imported_modules(path) if rule(name)})
    assert not upward, f"{module} imports {upward}, a higher layer"


def test_the_rule_catches_an_upward_import(tmp_path):
    assert forbidden("datasets.loaders")("methods.base") and forbidden("datasets.loaders")("utils.run")
    assert forbidden("utils.engine")("methods") and forbidden("scripts.make_table")("test")
    assert not forbidden("methods.lcsl")("datasets.longtail") and not forbidden("utils.run")("methods")
    assert forbidden("utils.checkpoint")("datasets.loaders") and forbidden("utils.metrics")("utils.engine")
    assert not forbidden("utils.config")("datasets.base") and forbidden("utils.config")("datasets.longtail")
    assert forbidden("methods.bccl")("utils.run") and not forbidden("methods.bccl")("utils.cli")
    assert forbidden("utils.cli")("methods.base") and not forbidden("utils.cli")("utils.engine")
    assert forbidden("methods.bccl")("scripts.make_table") and forbidden("utils.cli")("scripts.make_table")
    assert forbidden("datasets.loaders")("utils.cli") and forbidden("utils.engine")("utils.cli")
