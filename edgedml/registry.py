"""A small name -> factory registry (backbones, losses), instance-based so tests can build their own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from edgedml.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories.

    ``create`` drops ``None`` keyword arguments so that unset CLI options do not
    override a factory's own defaults (timm's habit), and answers an unknown name
    with the list of known ones.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return decorator

    @contextmanager
    def registered(self, name: str, factory: Callable[..., T]) -> Iterator[None]:
        """Register ``factory`` for the duration of a ``with`` block (tests, plugins)."""
        self.register(name)(factory)
        try:
            yield
        finally:
            del self._factories[name]

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: str) -> bool:
        return name in self._factories

    def create(self, name: str, **kwargs: Any) -> T:
        if name not in self._factories:
            known = ", ".join(self.names())
            raise ConfigError(f"unknown {self.kind} {name!r}", hint=f"choose one of: {known}")
        return self._factories[name](**{k: v for k, v in kwargs.items() if v is not None})
