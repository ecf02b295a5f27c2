"""A Record class behaves as the frozen dataclass @dataclass(frozen=True) would make of it.

Every Record class (every module of the package is imported first) is compared
with its twin: a plain frozen dataclass of the same name and fields, built by
dataclasses.make_dataclass, on instances made from the shipped profiles, the
example specs, a config and answers of the Slurm dialect, or else made of
stand-in values: ==, hash(), repr(), and what assigning or deleting an attribute
raises.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import pickle
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import config, profiles, slurm, spec
from gateway.record import Record

REPO = Path(__file__).resolve().parents[2]
ARRAY_SPEC = """
[job]
name = "sweep"
sector = "health"
command = ["python", "train.py"]

[resources]
gpus_per_node = 2
memory_per_node = "64G"

[environment]
modules = ["cuda"]
variables = { SEED = "1" }

[data]
inputs = ["ehr-synthetic"]
outputs = ["out/"]

[placement]
exclude = ["lumi"]
countries = ["IT"]

[array]
size = 4
parallel = 2
"""


@dataclasses.dataclass(frozen=True)
class StandIn:
    """A field value no other value equals."""

    field: str


def records_in(value: object) -> Iterator[Record]:
    """``value`` and every Record inside it (fields, tuples, dict values)."""
    if isinstance(value, Record):
        yield value
        for f in dataclasses.fields(value):  # type: ignore[arg-type]
            yield from records_in(getattr(value, f.name))
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from records_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from records_in(item)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[type, list[Record]]:
    """Instances of each Record class, by class."""
    array_spec = tmp_path_factory.mktemp("specs") / "sweep.toml"
    array_spec.write_text(ARRAY_SPEC)
    roots: list[object] = [profiles.load_profile(p) for p in sorted((REPO / "profiles").glob("*.toml"))]
    roots += [spec.load_spec(p) for p in sorted((REPO / "examples").glob("*.toml"))]
    roots += [spec.load_spec(p) for p in sorted((REPO / "tests" / "data" / "specs").glob("*.toml"))]
    roots.append(spec.load_spec(array_spec))
    access = config.SiteAccess(account="p1", user="me", port=2222)
    roots.append(config.UserConfig(sites={"lumi": access}, files=("a.toml",), sources={"lumi": "a.toml"}))
    roots.append(profiles.BrokenProfile(name="x", path="/p/x.toml", message="/p/x.toml: not valid TOML"))
    # Records that check their values: real ones, as the code makes them.
    roots += slurm.parse_submission_output("0\t0\t12\n1\t1\tsbatch: error: no\n", 3)
    found: dict[type, list[Record]] = {}
    for root in roots:
        for record in records_in(root):
            found.setdefault(type(record), []).append(record)
    for cls in RECORD_CLASSES:
        if cls not in found:  # the other records: two made of stand-ins (no field checks its value)
            found[cls] = [made_of_stand_ins(cls, k) for k in (1, 2)]
    return found


def made_of_stand_ins(cls: type, k: int) -> Record:
    init = [f.name for f in dataclasses.fields(cls) if f.init]
    record: Record = cls(**{name: StandIn(f"{name}-{k}") for name in init})
    return record


def twin_of(cls: type) -> Any:
    """A frozen dataclass of ``cls``'s name and fields whose methods dataclasses generate."""
    spec_fields = [
        (f.name, f.type, dataclasses.field(repr=f.repr, compare=f.compare, hash=f.hash))
        for f in dataclasses.fields(cls)
    ]
    twin = dataclasses.make_dataclass(cls.__name__, spec_fields, frozen=True)
    twin.__qualname__ = cls.__qualname__
    return twin


def as_twin(record: Record, twins: dict[type, Any]) -> Any:
    cls = type(record)
    values = {f.name: getattr(record, f.name) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return twins[cls](**values)


def every_gateway_module() -> None:
    """Import them all, so that every Record class is a subclass below (not only those the
    tests collected so far happened to import)."""
    import gateway

    for module in pkgutil.walk_packages(gateway.__path__, "gateway."):
        importlib.import_module(module.name)


every_gateway_module()
RECORD_CLASSES = sorted(
    (c for c in Record.__subclasses__() if c.__module__.startswith("gateway.")),
    key=lambda c: (c.__name__, c.__module__),
)


def test_the_render_path_classes_are_records() -> None:
    names = {c.__name__ for c in RECORD_CLASSES}
    assert {"JobSpec", "JobSection", "Resources", "SiteProfile", "Partition", "UserConfig"} <= names
    for cls in RECORD_CLASSES:
        assert dataclasses.is_dataclass(cls)
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        assert params.init and not params.eq and not params.repr, cls
        # Nothing but __init__ is compiled for the class: the rest is Record's.
        for method in ("__setattr__", "__delattr__", "__eq__", "__hash__", "__repr__"):
            assert method not in vars(cls), (cls, method)
        assert "__init__" in vars(cls)


def raised(action: Any, *args: object) -> str:
    """What ``action(*args)`` raised, as type and message."""
    try:
        action(*args)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "nothing"


@pytest.mark.parametrize("cls", RECORD_CLASSES, ids=lambda c: c.__name__)
def test_a_record_answers_as_the_generated_methods(cls: type, samples: dict[type, list[Record]]) -> None:
    instances = samples.get(cls, [])
    assert instances, f"no sample of {cls.__name__}"
    twins = {c: twin_of(c) for c in RECORD_CLASSES}
    # Each instance beside a copy of itself and copies differing in one field each (a value
    # of another instance, and a stand-in equal to nothing else).
    pool = list(instances)
    for record in instances[:2]:
        pool.append(dataclasses.replace(record))  # type: ignore[type-var]
        for f in dataclasses.fields(cls):
            mine = getattr(record, f.name)
            other = next((getattr(r, f.name) for r in instances if getattr(r, f.name) != mine), None)
            for value in ([other] if other is not None else []) + [StandIn(f.name)]:
                try:
                    pool.append(dataclasses.replace(record, **{f.name: value}))  # type: ignore[type-var]
                except ValueError:
                    continue  # a record that checks its values refuses this one
    for a in pool:
        twin_a = as_twin(a, twins)
        assert repr(a) == repr(twin_a)
        try:
            expected_hash: int | type = hash(twin_a)
        except TypeError:
            expected_hash = TypeError
        if expected_hash is TypeError:
            with pytest.raises(TypeError):
                hash(a)
        else:
            assert hash(a) == expected_hash
        for b in pool:
            twin_b = as_twin(b, twins)
            assert (a == b) is (twin_a == twin_b)
            assert (a != b) is (twin_a != twin_b)
        assert a != twin_a and a.__eq__(twin_a) is NotImplemented  # another class is never equal
        assert (a == None) is False  # noqa: E711 - the comparison under test


@pytest.mark.parametrize("cls", RECORD_CLASSES, ids=lambda c: c.__name__)
def test_a_record_is_as_frozen_as_a_frozen_dataclass(cls: type, samples: dict[type, list[Record]]) -> None:
    record = samples[cls][0]
    twin = as_twin(record, {cls: twin_of(cls)})
    before = repr(record)
    for name in [f.name for f in dataclasses.fields(cls)] + ["not_a_field", "__dict__"]:
        assert raised(setattr, record, name, 1) == raised(setattr, twin, name, 1)
        assert raised(delattr, record, name) == raised(delattr, twin, name)
    assert raised(setattr, record, "name", 1).startswith("FrozenInstanceError: cannot assign")
    assert repr(record) == before
    # Copies and pickles are equal records, as frozen.
    for again in (copy.copy(record), copy.deepcopy(record), pickle.loads(pickle.dumps(record))):
        assert again == record and type(again) is cls and repr(again) == before
        first = dataclasses.fields(cls)[0].name
        assert raised(setattr, again, first, 1) == f"FrozenInstanceError: cannot assign to field {first!r}"
    changed = dataclasses.replace(record)  # type: ignore[type-var]
    assert changed == record and changed is not record
