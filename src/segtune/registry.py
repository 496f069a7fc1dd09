"""Owns the small name -> object registry used for models, model families, runtimes, data formats, hooks,
prediction stages and sinks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from segtune.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names mapped to objects; registering a name twice or asking for an unknown one is an error."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name or getattr(obj, "__name__")
            if key in self._items:
                raise ValueError(f"{self.kind} '{key}' is already registered")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(f"{self.kind} '{name}' is not registered; choose one of: {', '.join(self.names())}")
        return self._items[name]

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return what it named (a plug-in loaded for a while, e.g. in a test)."""
        self.get(name)
        return self._items.pop(name)

    def names(self) -> list[str]:
        return sorted(self._items)

    def values(self) -> list[T]:
        """The registered objects, in the order they were registered."""
        return list(self._items.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items
