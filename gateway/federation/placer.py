"""Probing sites in parallel and placing jobs, one after the other, against shared snapshots.

The I/O of the federation: it asks each candidate site for its load (at most
once per TTL, across every aif process), hands the pure ranking what it
found, and counts each job it places against the snapshot, locally and in the
shared store, so a burst spreads instead of piling onto the site that looked
empty first.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from gateway.config import UserConfig
from gateway.errors import AifError
from gateway.federation.ranking import Ranking, SiteView, job_need, rank, static_reasons
from gateway.federation.snapshot import Placed, Snapshot, SnapshotStore, shape_key
from gateway.profiles import SiteProfile
from gateway.site import SiteBackend
from gateway.slurm.probe import StartEstimate
from gateway.spec import JobSpec

ScriptFor = Callable[[JobSpec, SiteProfile], str]


@dataclass
class Federation:
    """The sites, how to reach them, and the shared snapshots."""

    profiles: Mapping[str, SiteProfile]
    config: UserConfig
    backend_for: Callable[[str], SiteBackend]
    script_for: ScriptFor  # the batch script Slurm is asked to estimate (sbatch --test-only)
    store: SnapshotStore = field(default_factory=SnapshotStore)
    refresh: bool = False  # probe even if a snapshot is fresh (once per site per Federation)
    deadline_s: float = 30.0
    probes: list[str] = field(default_factory=list)  # sites probed by this process, in order
    _placed: dict[str, list[Placed]] = field(default_factory=dict)
    _refreshed: set[str] = field(default_factory=set)

    @property
    def ttl(self) -> float:
        return float(self.config.weights.snapshot_ttl_s)

    # -- snapshots ----------------------------------------------------------------------

    def snapshots(
        self, sites: Sequence[str], spec: JobSpec | None = None
    ) -> dict[str, tuple[Snapshot, StartEstimate | None]]:
        """Each site's snapshot (probed if stale) and Slurm's estimate for ``spec`` there."""
        results: dict[str, tuple[Snapshot, StartEstimate | None]] = {}
        lock = threading.Lock()

        def one(site: str) -> None:
            try:
                found = self._snapshot(site, spec)
            except Exception as exc:  # one site's surprise is that site's problem, never an abort
                found = (Snapshot(site, time.time(), 0.0, f"{type(exc).__name__}: {exc}", None), None)
            with lock:
                results[site] = found

        threads = [threading.Thread(target=one, args=(s,), daemon=True) for s in sites]
        for thread in threads:
            thread.start()
        end = time.monotonic() + self.deadline_s
        for thread in threads:
            thread.join(max(0.0, end - time.monotonic()))
        for site in sites:
            if site not in results:
                late = Snapshot(
                    site, time.time(), self.deadline_s, f"no answer within {self.deadline_s:.0f} s", None
                )
                results[site] = (late, None)
        return results

    def _snapshot(self, site: str, spec: JobSpec | None) -> tuple[Snapshot, StartEstimate | None]:
        profile = self.profiles[site]
        shape, script, partitions = None, None, [p.name for p in profile.partitions]
        if spec is not None:
            partition, gpus, cpus = job_need(spec, profile)
            res = spec.resources
            shape = shape_key(partition, res.nodes, gpus, cpus, res.walltime_seconds)
            script = self.script_for(spec, profile)
            partitions = [partition]
        try:
            with self.store.locked(site):
                snapshot = self.store.read(site)
                stale = snapshot is None or not snapshot.fresh(self.ttl)
                if self.refresh and site not in self._refreshed:
                    stale = True
                if snapshot is not None and not set(partitions) <= set(snapshot.queried):
                    stale = True  # the last probe did not ask about this partition's queue
                if stale or snapshot is None:
                    snapshot = self._probe(site, partitions, script, shape)
                    self._refreshed.add(site)
                elif shape is not None and shape not in snapshot.estimates and snapshot.result is not None:
                    assert script is not None
                    estimate = self._test_only(site, script)
                    snapshot = replace(snapshot, estimates={**snapshot.estimates, shape: estimate})
                    self.store.write(snapshot)
        except OSError as exc:
            return Snapshot(site, time.time(), 0.0, f"cannot use the snapshot store: {exc}", None), None
        return snapshot, snapshot.estimates.get(shape) if shape is not None else None

    def _probe(self, site: str, partitions: list[str], script: str | None, shape: str | None) -> Snapshot:
        self.probes.append(site)
        started = time.monotonic()
        try:
            result = self.backend_for(site).probe(partitions, script)
        except AifError as exc:
            snapshot = Snapshot(site, time.time(), time.monotonic() - started, exc.message, None)
        except Exception as exc:  # one site's surprise is that site's problem
            snapshot = Snapshot(
                site, time.time(), time.monotonic() - started, f"{type(exc).__name__}: {exc}", None
            )
        else:
            estimates = {shape: result.estimate} if shape is not None and result.estimate is not None else {}
            snapshot = Snapshot(
                site,
                time.time(),
                time.monotonic() - started,
                "",
                result,
                estimates,
                queried=tuple(partitions),
            )
        self.store.write(snapshot)
        return snapshot

    def _test_only(self, site: str, script: str) -> StartEstimate:
        try:
            return self.backend_for(site).test_only(script)
        except AifError as exc:
            return StartEstimate(False, None, "", f"sbatch --test-only could not run: {exc.message}")

    # -- ranking and placing -----------------------------------------------------------------

    def candidates(self, spec: JobSpec) -> list[str]:
        """Sites worth probing for ``spec``: those its static rules allow (the rest need no probe)."""
        return [
            name
            for name, profile in sorted(self.profiles.items())
            if not static_reasons(spec, profile, self.config)
        ]

    def rank(self, spec: JobSpec) -> Ranking:
        """Every site, ranked for ``spec`` (only those its static rules allow are probed)."""
        probed = self.snapshots(self.candidates(spec), spec)
        views = []
        for name, profile in sorted(self.profiles.items()):
            if name in probed:
                snapshot, estimate = probed[name]
                mine = tuple(p for p in self._placed.get(name, []) if p.at >= snapshot.probed_at)
                views.append(SiteView(profile, snapshot, estimate, mine))
            else:
                views.append(SiteView(profile, None))
        return rank(spec, views, self.config)

    def place(self, spec: JobSpec) -> Ranking:
        """Rank ``spec`` and count it against its winner's snapshot (here and for other processes)."""
        ranking = self.rank(spec)
        best = ranking.winner
        if best is not None:
            self.count_placed(spec, best.site)
        return ranking

    def count_placed(self, spec: JobSpec, site: str) -> None:
        partition, gpus, cpus = job_need(spec, self.profiles[site])
        res = spec.resources
        placed = Placed(time.time(), partition, gpus, cpus, res.nodes, res.walltime_seconds)
        self._placed.setdefault(site, []).append(placed)
        # If the store cannot be written other processes will not see it; this one still counts it.
        with contextlib.suppress(OSError):
            self.store.record_placed(site, placed)


def pinned_ranking(spec: JobSpec, profile: SiteProfile, config: UserConfig) -> Ranking:
    """A pinned site is the same filter with one candidate, and no probe (it needs no ranking)."""
    return rank(spec, [SiteView(profile, None)], config)
