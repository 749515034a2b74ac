"""Training methods: one module each, registered in METHODS when this package is imported."""
import dataclasses
import importlib
import pkgutil
from typing import Any, Dict

from methods.base import METHOD_CLIS, METHODS, Method, MethodChoice, StepOutput
from utils.config import METHOD_OPTION_FLAGS

# Importing every module registers its method (and its command line, if it has one), so adding
# a method is adding a file.
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base",):
        importlib.import_module(f"{__name__}.{_module.name}")
for _name in METHODS.names():  # the flags behind each method's options, for configuration messages
    METHOD_OPTION_FLAGS[_name] = {spec.name: spec.metadata["flags"][0]
                                  for spec in dataclasses.fields(METHODS.get(_name).Options)
                                  if spec.metadata.get("flags")}

__all__ = ["METHODS", "METHOD_CLIS", "Method", "MethodChoice", "StepOutput", "build_method", "rebuild"]


def build_method(name: str, model, class_counts, **kwargs) -> Method:
    """Builds a registered method around `model`; kwargs are the method's own options."""
    return METHODS.build(name, model, class_counts, **kwargs)


def rebuild(payload: Dict[str, Any]) -> Method:
    """The method (with its network) exactly as trained, from a loaded checkpoint's own
    description (``utils.checkpoint.load_checkpoint``); weights load with strict=True."""
    from models import build_model
    from utils.checkpoint import CheckpointError
    from utils.config import ConfigError

    try:
        model = build_model(**payload["model_kwargs"])
        method = build_method(payload["method"], model, payload["dataset"]["train_counts"],
                              **payload["method_kwargs"])
    except (KeyError, TypeError, ValueError, ConfigError) as error:  # unknown names, options of another version
        detail = str(error.args[0] if isinstance(error, KeyError) and error.args else error).splitlines()[0][:160]
        raise CheckpointError(f"{payload['path']}: this version of ltkit cannot rebuild the recorded method "
                              f"'{payload['method']}' ({type(error).__name__}: {detail})") from None
    try:
        method.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as error:
        # torch's message: a header line, then one line per kind of mismatch (missing, unexpected, size).
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else "")[:200]
        raise CheckpointError(f"{payload['path']}: weights do not match the recorded model ({detail})") from None
    return method
