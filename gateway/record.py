"""Record: frozen dataclasses whose frozenness, ==, hash() and repr() are written once.

``@dataclass(frozen=True)`` writes six methods of every class as source text
and compiles each when the class is created: about 0.4 ms a class in CPython
3.11, and ``aif render`` creates some twenty such classes (the spec's, the
config's and the profiles'), more than its whole start-up budget above
importing click. Those classes are declared instead as

    class Partition(Record):
        name: str
        ...

and each is made a dataclass when it is defined (:meth:`Record.__init_subclass__`):
dataclasses compiles its ``__init__`` alone. Its ``__setattr__``,
``__delattr__``, ``__eq__``, ``__hash__`` and ``__repr__`` are Record's, and
answer as the generated ones of a frozen dataclass do: a field cannot be
assigned after ``__init__`` set it (nor anything else be assigned or deleted:
:class:`dataclasses.FrozenInstanceError`, with the same message), instances
compare, hash and show their fields (``tests/unit/test_record.py`` holds every
class to a twin declared with ``@dataclass(frozen=True)``). Type checkers see
a frozen dataclass (``dataclass_transform``, with ``dataclasses.field`` as
its field specifier). ``dataclasses.fields``, ``replace`` and ``asdict`` work
as on any dataclass; only ``__dataclass_params__`` tells the difference. Every
frozen dataclass of aif is a Record (the CLI's site commands create some
eighty); the mutable ones are plain ``@dataclass``.
"""

from __future__ import annotations

import reprlib
import sys
from collections.abc import Callable
from dataclasses import Field, FrozenInstanceError, dataclass, field, fields
from operator import attrgetter
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING or sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # pragma: no cover - Python 3.10: only type checkers need it

    def dataclass_transform(**_: object) -> Callable[[type], type]:
        return lambda cls: cls


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
    """Which fields a record class compares, hashes and shows, as dataclasses chooses them."""

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


@dataclass_transform(frozen_default=True, field_specifiers=(field, Field))
class Record:
    """Base of a frozen dataclass: each subclass is made one as it is defined (see the module)."""

    __slots__ = ()
    # The subclass's field names: what __setattr__ checks (set as each subclass is made).
    _record_fields_: ClassVar[frozenset[str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Not frozen=True: that would compile __setattr__ and __delattr__ for the class.
        dataclass(eq=False, repr=False)(cls)
        # On the class itself: __setattr__ runs once per field of every instance made (a
        # ledger job has 25), so it stays a set lookup and a dict store.
        cls._record_fields_ = frozenset(f.name for f in fields(cls))  # type: ignore[arg-type]

    if not TYPE_CHECKING:  # type checkers know the fields are read-only (dataclass_transform)

        def __setattr__(self, name: str, value: object) -> None:
            # __init__ assigns each field once; nothing is assigned after it.
            values = self.__dict__
            if name in values or name not in self._record_fields_:
                raise FrozenInstanceError(f"cannot assign to field {name!r}")
            values[name] = value

        def __delattr__(self, name: str) -> None:
            raise FrozenInstanceError(f"cannot delete field {name!r}")

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
