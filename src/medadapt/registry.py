"""A small named registry (in the spirit of timm's ``_registry``): register, list, look up with a
clear error that lists the valid names."""
from __future__ import annotations

import difflib
from typing import Generic, Iterator, TypeVar

from medadapt.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T | None = None):
        """``reg.register("x", obj)`` or as a decorator ``@reg.register("x")``."""
        if item is None:
            def deco(obj):
                self.register(name, obj)
                return obj
            return deco
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(self.names())}")
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        for k in self.names():
            yield k, self._items[k]
