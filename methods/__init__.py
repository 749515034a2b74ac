"""Training methods: one module each, registered in METHODS when this package is imported."""
import importlib
import pkgutil

from methods.base import METHOD_CLIS, METHODS, Method, MethodChoice, StepOutput

# Importing every module registers its method (and its command line, if it has one), so adding
# a method is adding a file.
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base",):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "METHOD_CLIS", "Method", "MethodChoice", "StepOutput", "build_method"]


def build_method(name: str, model, class_counts, **kwargs) -> Method:
    """Builds a registered method around `model`; kwargs are the method's own options."""
    return METHODS.build(name, model, class_counts, **kwargs)
