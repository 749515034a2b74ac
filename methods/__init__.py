"""Training methods: one module each, registered in METHODS."""
from methods.base import METHODS, Method, StepOutput
from methods import erm  # noqa: F401  (registers 'erm')

__all__ = ["METHODS", "Method", "StepOutput", "build_method"]


def build_method(name: str, model, class_counts, **kwargs) -> Method:
    """Builds a registered method around `model`; kwargs are the method's own options."""
    return METHODS.build(name, model, class_counts, **kwargs)
