"""A small name -> factory registry; one per component folder feeds argparse ``choices``."""
from __future__ import annotations

from typing import Callable, Dict, List, TypeVar

T = TypeVar("T", bound=Callable)


class Registry:
    """Maps names to factories (classes or functions).

    ``register`` is a decorator, ``build`` calls the factory, ``names`` is what argparse offers.
    An unknown name raises a ``KeyError`` that lists every registered name, so a typo in a
    checkpoint or a script says what would have worked.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: Dict[str, Callable] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def decorator(factory: T) -> T:
            key = name or factory.__name__
            if key in self._factories:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._factories[key] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable:
        if name not in self._factories:
            raise KeyError(f"unknown {self.kind} '{name}'; choose one of: {', '.join(self.names())}")
        return self._factories[name]

    def build(self, name: str, *args, **kwargs):
        return self.get(name)(*args, **kwargs)

    def names(self) -> List[str]:
        return sorted(self._factories)

    def __contains__(self, name: str) -> bool:
        return name in self._factories
