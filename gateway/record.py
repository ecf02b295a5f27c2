"""==, hash() and repr() of frozen dataclasses, written once instead of compiled for each class.

``@dataclass(frozen=True)`` writes six methods of every class as source text
and compiles each when the class is created: about 0.4 ms a class in CPython
3.11, and ``aif render`` creates twenty such classes (the spec's, the config's
and the profiles'), more than its whole start-up budget above importing click.
Those classes are declared

    @dataclass(frozen=True, eq=False, repr=False)
    class Partition(Record):

dataclasses still write their ``__init__`` and the frozen ``__setattr__`` and
``__delattr__``; ``__eq__``, ``__hash__`` and ``__repr__`` are :class:`Record`'s
and give what the generated ones give (``tests/unit/test_record.py`` compares
them class by class). The other dataclasses of aif are plain frozen ones.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from dataclasses import fields
from operator import attrgetter
from typing import Any

Values = Callable[[Any], tuple[Any, ...]]


def _values_of(names: list[str]) -> Values:
    """A function giving a record's values of ``names`` as a tuple (attrgetter's, when it can)."""
    if len(names) > 1:
        return attrgetter(*names)  # a tuple of the values: what the generated methods compare and hash
    if names:
        only = names[0]
        return lambda record: (getattr(record, only),)
    return lambda record: ()


class _Layout:
    """Which fields a record class compares, hashes and shows, as dataclasses choose them."""

    def __init__(self, cls: type) -> None:
        own = fields(cls)
        self.compared = _values_of([f.name for f in own if f.compare])
        self.hashed = _values_of([f.name for f in own if (f.compare if f.hash is None else f.hash)])
        self.shown = [f.name for f in own if f.repr]


_layouts: dict[type, _Layout] = {}


def _layout(cls: type) -> _Layout:
    layout = _layouts.get(cls)
    if layout is None:
        layout = _layouts[cls] = _Layout(cls)
    return layout


class Record:
    """Base of a frozen dataclass declared with ``eq=False, repr=False``: its value semantics."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            compared = _layout(self.__class__).compared
            return compared(self) == compared(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(_layout(self.__class__).hashed(self))

    @reprlib.recursive_repr()
    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in _layout(self.__class__).shown)
        return f"{self.__class__.__qualname__}({shown})"
