"""Probing sites in parallel and placing jobs, one after the other, against shared snapshots.

The I/O of the federation: it asks each candidate site for its load (at most
once per TTL, across every aif process), hands the pure ranking what it
found, and counts each job it places against the snapshot, so a burst
spreads instead of piling onto the site that looked empty first. A process
counts its own placements from the first; it shares them with other
processes (``publish``) once it is about to send them, so a dry run or a
batch refused as a whole leaves nothing counted that was never sent.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

from gateway.config import UserConfig
from gateway.errors import AifError, HomeUnusable
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
    _placed: dict[str, list[Placed]] = field(default_factory=dict)  # by this process
    _unshared: list[tuple[str, Placed]] = field(default_factory=list)  # placed, not yet published
    _shared: dict[str, tuple[str, Placed]] = field(default_factory=dict)  # ident -> (site, as published)
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
        unusable_home: list[BaseException] = []
        lock = threading.Lock()

        def one(site: str) -> None:
            try:
                found = self._snapshot(site, spec)
            except (HomeUnusable, OSError) as exc:  # aif's own home, not the site: an error
                with lock:
                    unusable_home.append(exc)
                return
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
        if unusable_home:
            exc = unusable_home[0]
            if isinstance(exc, HomeUnusable):
                raise exc
            raise HomeUnusable(f"cannot use the snapshot store {self.store.directory}: {exc}") from exc
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
        with self.store.locked(site):
            snapshot = self.store.read(site)
            stale = snapshot is None or not snapshot.fresh(self.ttl)
            if self.refresh and site not in self._refreshed:
                stale = True
            if snapshot is not None:
                if not set(partitions) <= set(snapshot.queried):
                    stale = True  # the last probe did not ask about this partition's queue
                # Ask again about every partition asked before: a burst that mixes GPU and
                # CPU jobs probes once per partition, not once per job.
                partitions = sorted({*snapshot.queried, *partitions})
            if stale or snapshot is None:
                snapshot = self._probe(site, partitions, script, shape)
                self._refreshed.add(site)
                estimate = snapshot.result.estimate if snapshot.result is not None else None
            elif shape is not None and shape in snapshot.estimates:
                estimate = snapshot.estimates[shape]
            elif shape is not None and snapshot.result is not None:
                assert script is not None
                estimate = self._test_only(site, script)
                if not estimate.transient:  # no answer is not an answer: ask again next time
                    snapshot = replace(snapshot, estimates={**snapshot.estimates, shape: estimate})
                    self.store.write(snapshot)
            else:
                estimate = None
        return snapshot, estimate if shape is not None else None

    def _probe(self, site: str, partitions: list[str], script: str | None, shape: str | None) -> Snapshot:
        self.probes.append(site)
        # Stamped when the probe starts: a job placed while it runs is not in what it reads.
        started, clock = time.time(), time.monotonic()
        try:
            result = self.backend_for(site).probe(partitions, script)
        except AifError as exc:
            snapshot = Snapshot(site, started, time.monotonic() - clock, exc.message, None)
        except Exception as exc:  # one site's surprise is that site's problem
            snapshot = Snapshot(site, started, time.monotonic() - clock, f"{type(exc).__name__}: {exc}", None)
        else:
            found = result.estimate
            estimates = {}
            if shape is not None and found is not None and not found.transient:
                estimates[shape] = found
            snapshot = Snapshot(
                site, started, time.monotonic() - clock, "", result, estimates, queried=tuple(partitions)
            )
        self.store.write(snapshot)
        return snapshot

    def _test_only(self, site: str, script: str) -> StartEstimate:
        asked = time.time()  # its seconds count from the site's now then, not from the probe
        try:
            return replace(self.backend_for(site).test_only(script), asked_at=asked)
        except AifError as exc:
            why = exc.message
        except Exception as exc:  # one site's surprise is that site's problem
            why = f"{type(exc).__name__}: {exc}"
        return StartEstimate(False, None, "", why, transient=True)

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
                views.append(SiteView(profile, snapshot, estimate, self._mine(name, snapshot)))
            else:
                views.append(SiteView(profile, None))
        return rank(spec, views, self.config, time.time())

    def _mine(self, site: str, snapshot: Snapshot) -> tuple[Placed, ...]:
        """This process's placements at ``site`` that ``snapshot`` does not count already.

        One it has not shared yet was never sent, so no probe can have seen it in the
        queue, however old; one it shared counts until a probe after it.
        """
        shared = {p.ident for p in snapshot.placed}
        unshared = {p.ident for _, p in self._unshared}
        return tuple(
            p
            for p in self._placed.get(site, [])
            if p.ident not in shared and (p.ident in unshared or p.at >= snapshot.probed_at)
        )

    def place(self, spec: JobSpec) -> tuple[Ranking, str]:
        """Rank ``spec`` and count it against its winner's snapshot, in this process.

        Returns the ranking and the placement's name for ``publish`` ("" when no site can
        run it).
        """
        ranking = self.rank(spec)
        best = ranking.winner
        return ranking, self._count(spec, best.site) if best is not None else ""

    def publish(self, placements: Collection[str] | None = None) -> None:
        """Share placements (all not shared yet, by default) with other processes: their jobs
        are about to be sent. The others stay counted by this process alone."""
        by_site: dict[str, list[Placed]] = {}
        now = time.time()  # sent after now: a probe that started before cannot have seen them
        for site, placed in list(self._unshared):
            if placements is None or placed.ident in placements:
                by_site.setdefault(site, []).append(replace(placed, at=now))
                self._unshared.remove((site, placed))
                self._shared[placed.ident] = (site, replace(placed, at=now))
        for site, shared in by_site.items():
            # If the store cannot be written other processes will not see them; this one still counts them.
            with contextlib.suppress(OSError):
                self.store.record_placed(site, *shared)

    def sent(self, placements: Collection[str]) -> None:
        """The jobs of these (published) placements are in Slurm's queue now, or may be: a probe
        that started since they were published did not see them, so they count again until the
        next probe (a probe that starts after now reads them in the queue)."""
        now = time.time()
        by_site: dict[str, list[Placed]] = {}
        for ident in placements:
            if ident in self._shared:
                site, placed = self._shared[ident]
                self._shared[ident] = (site, replace(placed, at=now))  # still withdrawable
                by_site.setdefault(site, []).append(replace(placed, at=now))
                mine = self._placed[site]
                self._placed[site] = [replace(p, at=now) if p.ident == ident else p for p in mine]
        for site, again in by_site.items():
            with contextlib.suppress(OSError):
                self.store.record_placed(site, *again)

    def withdraw(self, placement: str) -> None:
        """A placement whose job was not sent after all (its site was down, or refused it)."""
        for site, placed in self._placed.items():
            self._placed[site] = [p for p in placed if p.ident != placement]
        self._unshared = [(s, p) for s, p in self._unshared if p.ident != placement]
        gone = self._shared.pop(placement, None)
        if gone is not None:
            with contextlib.suppress(OSError):
                self.store.withdraw_placed(gone[0], placement)

    def count_placed(self, spec: JobSpec, site: str, instead_of: str = "") -> str:
        """Count a job about to be sent to ``site`` (a failover), here and for other processes;
        ``instead_of``: its placement at the site it failed at, no longer counted."""
        if instead_of:
            self.withdraw(instead_of)
        ident = self._count(spec, site)
        self.publish([ident])
        return ident

    def _count(self, spec: JobSpec, site: str) -> str:
        partition, gpus, cpus = job_need(spec, self.profiles[site])
        res = spec.resources
        ident = secrets.token_hex(8)
        placed = Placed(time.time(), partition, gpus, cpus, res.nodes, res.walltime_seconds, ident)
        self._placed.setdefault(site, []).append(placed)
        self._unshared.append((site, placed))
        return ident


def pinned_ranking(spec: JobSpec, profile: SiteProfile, config: UserConfig) -> Ranking:
    """A pinned site is the same filter with one candidate, and no probe (it needs no ranking)."""
    return rank(spec, [SiteView(profile, None)], config)
