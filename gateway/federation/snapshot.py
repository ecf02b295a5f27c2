"""Site load snapshots, shared by every aif process through ``$AIF_HOME/federation/``.

A snapshot is what one probe of a site found, plus the jobs any aif process
placed there since (so a burst, even one spread over many processes, counts
the jobs just placed), plus Slurm's estimated starts per job shape (so a
hundred identical submissions cost one ``sbatch --test-only`` per site per
TTL). A site is probed by at most one process at a time: the prober holds the
site's lock; the others wait for it and then read what it found. Sites
rate-limit controller RPCs: being polite is a feature.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import field
from pathlib import Path
from typing import Any

from gateway import slurm
from gateway.home import ensure_home
from gateway.record import Record
from gateway.slurm.backlog import NodeSlots, QueuedJob
from gateway.slurm.probe import PartitionDemand, ProbeResult, Reservation, StartEstimate


class Placed(Record):
    """A job placed at the site since its probe: what it takes from the free capacity."""

    at: float  # this machine's clock (time.time): when it was placed, or shared with other processes
    partition: str
    gpus: int
    cpus: int
    nodes: int = 1
    walltime_s: int = 0  # 0: not recorded (snapshots written before it was)
    ident: str = ""  # one placement, wherever it is counted (so it is never counted twice)


class Snapshot(Record):
    """One site's load as last probed (``problem`` set if it could not be)."""

    site: str
    probed_at: float  # this machine's clock
    latency_s: float
    problem: str
    result: ProbeResult | None
    estimates: dict[str, StartEstimate] = field(default_factory=dict)  # job shape -> estimate
    placed: tuple[Placed, ...] = ()
    queried: tuple[str, ...] = ()  # the partitions whose queue was asked for (the probe is light)

    def age(self, now: float | None = None) -> float:
        return (now if now is not None else time.time()) - self.probed_at

    def fresh(self, ttl: float, now: float | None = None) -> bool:
        return self.age(now) < ttl


def shape_key(partition: str, nodes: int, gpus: int, cpus: int, walltime_s: int) -> str:
    """A job shape, as far as Slurm's estimate goes: partition, nodes, GPUs, CPUs, walltime."""
    return f"{partition}/{nodes}n/{gpus}g/{cpus}c/{walltime_s}s"


class SnapshotStore:
    """The snapshots in one directory, with one lock file per site."""

    def __init__(self, directory: Path | None = None) -> None:
        from gateway.home import aif_home

        self.directory = directory if directory is not None else aif_home() / "federation"

    def _path(self, site: str) -> Path:
        return self.directory / f"{site}.json"

    @contextlib.contextmanager
    def locked(self, site: str) -> Iterator[None]:
        """Hold the site's lock: one probe (or one update) of a site at a time, across processes."""
        ensure_home(self.directory)
        fd = os.open(self.directory / f"{site}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read(self, site: str) -> Snapshot | None:
        try:
            data = json.loads(self._path(site).read_text())
            return _snapshot_from_json(data)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # none yet, or unreadable: probe again

    def write(self, snapshot: Snapshot) -> None:
        ensure_home(self.directory)
        path = self._path(snapshot.site)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(_snapshot_to_json(snapshot), handle)
        partial.replace(path)

    def record_placed(self, site: str, *placed: Placed) -> None:
        """Add jobs just placed at ``site`` to its snapshot (under the site's lock).

        A job shared before the probe began may already be in the queue it read:
        only those shared since are kept.
        """
        with self.locked(site):
            snapshot = self.read(site)
            if snapshot is None:
                return
            known = {p.ident for p in snapshot.placed if p.ident}
            new = tuple(p for p in placed if p.at >= snapshot.probed_at and p.ident not in known)
            if new:
                self.write(dataclasses.replace(snapshot, placed=(*snapshot.placed, *new)))

    def withdraw_placed(self, site: str, ident: str) -> None:
        """Forget one placement at ``site`` (its job was never sent there)."""
        with self.locked(site):
            snapshot = self.read(site)
            if snapshot is not None and any(p.ident == ident for p in snapshot.placed):
                kept = tuple(p for p in snapshot.placed if p.ident != ident)
                self.write(dataclasses.replace(snapshot, placed=kept))

    def record_estimate(self, site: str, key: str, estimate: StartEstimate) -> None:
        with self.locked(site):
            snapshot = self.read(site)
            if snapshot is not None:
                self.write(dataclasses.replace(snapshot, estimates={**snapshot.estimates, key: estimate}))


# -- JSON ------------------------------------------------------------------------------


def _snapshot_to_json(snapshot: Snapshot) -> dict[str, Any]:
    result = snapshot.result
    return {
        "site": snapshot.site,
        "probed_at": snapshot.probed_at,
        "latency_s": snapshot.latency_s,
        "problem": snapshot.problem,
        "result": None
        if result is None
        else {
            "site_epoch": result.site_epoch,
            "partitions": [_load_to_json(p) for p in result.partitions],
            "demand": {k: dataclasses.asdict(v) for k, v in result.demand.items()},
            "queue_visible": result.queue_visible,
            "max_array_size": result.max_array_size,
            "site_now": result.site_now,
            "reservations": [dataclasses.asdict(r) for r in result.reservations],
            "backlog": [dataclasses.asdict(j) for j in result.backlog],
            "nodes": [dataclasses.asdict(n) for n in result.nodes],
        },
        "estimates": {k: dataclasses.asdict(v) for k, v in snapshot.estimates.items()},
        "placed": [dataclasses.asdict(p) for p in snapshot.placed],
        "queried": list(snapshot.queried),
    }


def _load_to_json(load: slurm.PartitionLoad) -> dict[str, Any]:
    # Not dataclasses.asdict: it deep-copies, and nodes_by_state is a read-only mapping proxy.
    data = {f.name: getattr(load, f.name) for f in dataclasses.fields(load)}
    data["nodes_by_state"] = dict(load.nodes_by_state)
    data["gres"] = list(load.gres)
    return data


def _snapshot_from_json(data: dict[str, Any]) -> Snapshot:
    raw = data["result"]
    result = None
    if raw is not None:
        result = ProbeResult(
            site_epoch=int(raw["site_epoch"]),
            partitions=tuple(
                slurm.PartitionLoad(**{**p, "gres": tuple(p["gres"])}) for p in raw["partitions"]
            ),
            demand={k: PartitionDemand(**v) for k, v in raw["demand"].items()},
            queue_visible=bool(raw["queue_visible"]),
            max_array_size=raw["max_array_size"],
            site_now=str(raw.get("site_now", "")),
            reservations=tuple(
                Reservation(**{**r, "flags": tuple(r["flags"])}) for r in raw.get("reservations", [])
            ),
            backlog=tuple(
                QueuedJob(**{**j, "partitions": tuple(j["partitions"]), "hosts": tuple(j["hosts"])})
                for j in raw.get("backlog", [])
            ),
            nodes=tuple(
                NodeSlots(**{**n, "partitions": tuple(n["partitions"])}) for n in raw.get("nodes", [])
            ),
        )
    return Snapshot(
        site=str(data["site"]),
        probed_at=float(data["probed_at"]),
        latency_s=float(data["latency_s"]),
        problem=str(data["problem"]),
        result=result,
        estimates={k: StartEstimate(**v) for k, v in data["estimates"].items()},
        placed=tuple(Placed(**p) for p in data["placed"]),
        queried=tuple(data.get("queried", ())),
    )
