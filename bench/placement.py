"""Placement quality: how long jobs wait when aif places them, against ARC's brokers.

Run as root with `make bench`, or alone: `python bench/placement.py [--quick] [--json]`.
It brings the sandbox up if it is not (gateway/sandbox) and uses only its two GPU
sites, sandbox-north (2 nodes x 4 GPUs) and sandbox-south (1 node x 8 GPUs);
sandbox-east has no GPUs, so no job here is eligible there.

Two cases, each replayed once per policy, with the same jobs at the same
arrival offsets:

burst     40 GPU jobs (12 with --quick) arriving as a Poisson process at a
          rate of 40 per 25 s (12 per 6 s). GPUs per job: 1, 2, 4 or 8 with
          probabilities 0.45, 0.30, 0.18, 0.07 (8-GPU jobs fit only
          sandbox-south, whose node has 8). Run time: `sleep N`, N drawn
          from a Pareto type I distribution, shape 1.5 (heavy-tailed: finite
          mean, infinite variance), scale 4 s, clipped to 60 s and rounded
          to whole seconds: median about 6 s, mean about 9 s (quick: scale
          2 s, clip 12 s). Walltime: the run time times an overestimate
          drawn uniformly from 1.5 to 3, rounded up to whole minutes, as
          Slurm counts time limits. The minute is a floor: most jobs here run
          a few seconds, so their walltime is 5-15 times their run time (on
          real systems a job uses a third of its walltime or less, often far
          less); Slurm's own start estimates see them as 1-minute jobs. The
          drawn workload is printed with the results.
designed  queue length misleads: sandbox-north is busy with a few long jobs
          (2 x 4 GPUs, 60 s, walltime 3 min; quick: 20 s) and no job
          waiting; sandbox-south with many short ones (15 x 1 GPU, 8 s;
          quick: 5 s; walltime 1 min: 8 running, 7 waiting). Then 8 probes
          (1 GPU, 10 s, walltime 1 min) arrive 0.5 s apart and are placed by
          the policy. Only the probes are measured. Counting waiting jobs
          sends them all to north, where they wait for the long jobs; south
          clears within seconds. The walltimes put south first (room in
          1 min against 3), but Slurm 22.05's own `sbatch --test-only` does
          not: it plans the waiting jobs a whole node at a time and answers
          8 min at south; aif reads the queue GPU by GPU. North is the trap on
          purpose: it is also where static placement went (it ranked tied
          sites by name).

The background of the designed case is submitted the same way for every
policy (`aif submit --no-coalesce --site` with all of one site's specs, one
process per site: separate jobs, not one array, so that seven jobs wait).

Policies. Each job is submitted by its own `aif submit --json SPEC` process,
started at the job's arrival time; the baselines choose a site first and add
`--site SITE`, so every policy pays the same submission path. A baseline picks
among the sites aif itself finds eligible (``gateway.federation.ranking.static_reasons``: the
same rules as a pinned submission).

aif           `aif submit SPEC`: aif places the job.
random        uniform among the eligible sites (ARC's default broker), seeded.
roundrobin    cycles the sites in name order, skipping those not eligible.
fastestqueue  ARC's FastestQueue broker (nordugrid/arc,
              src/hed/acc/Broker/FastestQueueBrokerPlugin.cpp, and
              ExecutionTarget::RegisterJobSubmission in
              src/hed/libs/compute/ExecutionTarget.cpp), mapped as follows:
              - a site is a target; slots are GPUs: TotalSlots = the site's
                GPUs, FreeSlots = its idle GPUs (sinfo Gres minus GresUsed),
                WaitingJobs = its pending jobs in the gpu partition (squeue);
                NumberOfSlots of a job = its GPUs;
              - read from each site once, at the start of the burst (ARC's
                client queries the targets once per bulk submission), then
                kept up to date only by the client's own bookkeeping;
              - order: WaitingJobs/TotalSlots ascending (compared exactly, as
                ARC does by cross-multiplying). ARC orders two sites that both
                have no waiting job by FreeSlots with `<=`, which is not a
                strict weak ordering (and puts the site with fewer free slots
                first); here ties are broken by more FreeSlots, then more
                TotalSlots, then site name: a strict, deterministic order;
              - bookkeeping after each placement, as RegisterJobSubmission:
                if FreeSlots >= the job's slots, FreeSlots -= slots (it starts
                at once), otherwise WaitingJobs += slots. (ARC's header says
                "incremented with 1"; its code adds the job's slot count,
                which is what is done here; for 1-GPU jobs they agree.)
              - sites that do not report the three numbers are dropped (ARC's
                match()); none does here.

Wait of a job = Slurm's start time (squeue's start_time once the job is no
longer pending, or `sacct -c` Start once it left squeue) minus the wall-clock
time just before its `aif submit` process was started. The sites run on this
machine, so both clocks are the same. Slurm's start times are whole seconds
(truncated), so a wait reads up to 1 s short, alike for every policy.
Every wait includes the submission itself (an `aif submit` process, about
0.6 s here) and Slurm's scheduling tick (about 1 s). A run ends once every job
has started (the rest of their sleep is not waited for) or at its deadline;
a job not started by then counts with its wait so far (a lower bound, marked
">=" and counted as censored). Then every sandbox job is cancelled and the
next run starts once every node is idle again (nothing is drained). The
sandbox's scheduling is short (batch_sched_delay=0, bf_interval=2): checked
at the start.

Output: per case a table (policy, jobs, mean and 90th-percentile wait, the
policy's mean over aif's, where the jobs went), one line of aif's mean over
each baseline's next to the goals (burst: <= 0.6 x random, <= 0.8 x
fastestqueue; designed: <= 0.5 x fastestqueue), and the bench's own run time
(the whole bench is meant to stay under 15 minutes). `--json` prints one
object with everything, per-job waits included. The 90th percentile is
interpolated between order statistics (statistics.quantiles, inclusive).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

POLICIES = ("aif", "random", "fastestqueue", "roundrobin")
GPU_SITES = ("sandbox-north", "sandbox-south")
SANDBOX_USER_STATES_ACTIVE = frozenset({"PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED"})
# States whose start_time is a real start (a pending job's start_time is Slurm's estimate;
# a job cancelled while pending gets its cancel time).
STARTED_STATES = frozenset(
    {"RUNNING", "COMPLETING", "COMPLETED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}
)
TIME_CAP_S = 15 * 60
GOALS = (("burst", "random", 0.6), ("burst", "fastestqueue", 0.8), ("designed", "fastestqueue", 0.5))


# --- The baselines' choices: pure ----------------------------------------------


@dataclass(frozen=True)
class QueueInfo:
    """What ARC's FastestQueue reads of one target, in slots (GPUs here)."""

    waiting_jobs: int
    total_slots: int
    free_slots: int

    def reports_all(self) -> bool:
        # ARC's FastestQueueBrokerPlugin::match drops targets that leave any of these unset (-1).
        return self.waiting_jobs >= 0 and self.total_slots > 0 and self.free_slots >= 0


def fastest_queue_order(infos: Mapping[str, QueueInfo], eligible: Iterable[str]) -> list[str]:
    """The eligible sites in FastestQueue's order, best first.

    WaitingJobs/TotalSlots ascending, exactly (a Fraction); ties by more free
    slots, then more total slots, then name: strict and deterministic, unlike
    ARC's `<=` on FreeSlots. Sites that do not report all three numbers are dropped.
    """
    usable = [site for site in eligible if site in infos and infos[site].reports_all()]

    def key(site: str) -> tuple[Fraction, int, int, str]:
        info = infos[site]
        return (Fraction(info.waiting_jobs, info.total_slots), -info.free_slots, -info.total_slots, site)

    return sorted(usable, key=key)


def register_submission(info: QueueInfo, slots: int) -> QueueInfo:
    """ARC's ExecutionTarget::RegisterJobSubmission: the client's own bookkeeping."""
    if info.free_slots >= slots:  # the job will start directly
        return replace(info, free_slots=info.free_slots - slots)
    return replace(info, waiting_jobs=info.waiting_jobs + slots)  # it enters the queue


@dataclass
class FastestQueue:
    """One client session: a snapshot read at the start of the burst, then bookkeeping."""

    infos: dict[str, QueueInfo]

    def choose(self, eligible: Iterable[str], slots: int) -> str:
        order = fastest_queue_order(self.infos, eligible)
        if not order:
            raise ValueError("no eligible site reports its queue")
        site = order[0]
        self.infos[site] = register_submission(self.infos[site], slots)
        return site


@dataclass
class RandomChoice:
    """ARC's default broker: uniform among the eligible sites (sorted first, so a seed replays)."""

    rng: random.Random

    def choose(self, eligible: Iterable[str], slots: int) -> str:
        return self.rng.choice(sorted(eligible))


@dataclass
class RoundRobin:
    """Cycles ``sites`` in order; a site the job cannot use is skipped (the cycle goes on after the pick)."""

    sites: tuple[str, ...]
    position: int = 0

    def choose(self, eligible: Iterable[str], slots: int) -> str:
        allowed = set(eligible)
        for step in range(len(self.sites)):
            index = (self.position + step) % len(self.sites)
            if self.sites[index] in allowed:
                self.position = (index + 1) % len(self.sites)
                return self.sites[index]
        raise ValueError("no eligible site")


def gres_gpus(text: str) -> int:
    """GPUs in one sinfo Gres/GresUsed entry: 'gpu:4', 'gpu:4(IDX:0-3)', 'gpu:fake:2(IDX:0-1)', '(null)'."""
    total = 0
    for part in text.split(","):
        part = part.split("(", 1)[0].strip()
        fields = part.split(":")
        if fields[0] == "gpu" and len(fields) >= 2 and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def mean_p90(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return (math.nan, math.nan)
    if len(values) == 1:
        return (values[0], values[0])
    return (statistics.fmean(values), statistics.quantiles(values, n=10, method="inclusive")[8])


# --- The workload ----------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    name: str
    gpus: int
    runtime_s: int
    walltime_min: int
    offset_s: float  # arrival, from the start of the run
    limit_s: float = 0.0  # the run time times the overestimate, before Slurm's rounding to minutes


GPU_CHOICES = ((1, 0.45), (2, 0.30), (4, 0.18), (8, 0.07))


def draw_burst(
    count: int, window_s: float, pareto_scale_s: float, clip_s: float, seed: int, prefix: str = "burst"
) -> list[Job]:
    """The burst, reproducible from its seed (see the module docstring)."""
    rng = random.Random(seed)
    jobs = []
    offset = 0.0
    for i in range(count):
        gpus = rng.choices([g for g, _ in GPU_CHOICES], weights=[w for _, w in GPU_CHOICES])[0]
        runtime = max(1, round(min(clip_s, pareto_scale_s * rng.paretovariate(1.5))))
        over = rng.uniform(1.5, 3.0)
        walltime = max(1, math.ceil(runtime * over / 60))
        jobs.append(Job(f"{prefix}-{i:02d}", gpus, runtime, walltime, round(offset, 3), runtime * over))
        offset += rng.expovariate(count / window_s)
    return jobs


@dataclass(frozen=True)
class Designed:
    background: dict[str, list[Job]]  # site -> jobs submitted there before the probes
    probes: list[Job]
    expect_running: dict[str, int]
    expect_pending: dict[str, int]


def designed_case(quick: bool) -> Designed:
    long_s, long_wall = (20 if quick else 60), 3
    short_s = 5 if quick else 8
    long_jobs = [Job(f"long-{i}", 4, long_s, long_wall, 0.0) for i in range(2)]
    short_jobs = [Job(f"short-{i:02d}", 1, short_s, 1, 0.0) for i in range(15)]
    probes = [Job(f"probe-{i}", 1, 10, 1, 0.5 * i) for i in range(8)]
    return Designed(
        background={"sandbox-north": long_jobs, "sandbox-south": short_jobs},
        probes=probes,
        expect_running={"sandbox-north": 2, "sandbox-south": 8},
        expect_pending={"sandbox-north": 0, "sandbox-south": 7},
    )


def spec_text(job: Job, workroot: str) -> str:
    hours, minutes = divmod(job.walltime_min, 60)
    return (
        f'[job]\nname = "{job.name}"\ncommand = ["sleep", "{job.runtime_s}"]\n'
        f'workdir = "{workroot}/{{id}}"\n\n'
        f'[resources]\ngpus_per_node = {job.gpus}\nwalltime = "{hours:02d}:{minutes:02d}:00"\n'
    )


def describe_workload(jobs: Sequence[Job]) -> str:
    gpus = {g: sum(1 for j in jobs if j.gpus == g) for g, _ in GPU_CHOICES}
    runtimes = sorted(j.runtime_s for j in jobs)
    work = sum(j.gpus * j.runtime_s for j in jobs)
    over = statistics.median(j.walltime_min * 60 / j.runtime_s for j in jobs)
    window = max(j.offset_s for j in jobs)
    return (
        f"{len(jobs)} jobs over {window:.1f} s; GPUs 1/2/4/8: "
        + "/".join(str(gpus[g]) for g, _ in GPU_CHOICES)
        + f"; run time median {statistics.median(runtimes):.0f} s, mean {statistics.fmean(runtimes):.1f} s,"
        f" max {runtimes[-1]} s; {work} GPU-s of work ({work / 16:.0f} s on all 16 GPUs);"
        f" walltime/run time median {over:.1f}"
    )


# --- The sandbox -----------------------------------------------------------------


@dataclass
class Sites:
    """The sandbox's clusters, reached with the local Slurm client (root) and each one's SLURM_CONF."""

    confs: dict[str, str]
    user: str

    def slurm(self, site: str, *argv: str, check: bool = True) -> str:
        env = {**os.environ, "SLURM_CONF": self.confs[site]}
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"{site}: {' '.join(argv)}: rc {result.returncode}: {result.stderr.strip()}")
        return result.stdout

    def queue_info(self, site: str) -> QueueInfo:
        pending = self.slurm(site, "squeue", "-h", "-p", "gpu", "-t", "PENDING", "-o", "%i").split()
        total = free = 0
        for line in self.slurm(
            site, "sinfo", "-h", "-N", "-p", "gpu", "-O", "Gres:40,GresUsed:60"
        ).splitlines():
            fields = line.split()
            if len(fields) >= 2:
                total += gres_gpus(fields[0])
                free += gres_gpus(fields[0]) - gres_gpus(fields[1])
        return QueueInfo(waiting_jobs=len(pending), total_slots=total, free_slots=free)

    def jobs(self, site: str) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = json.loads(self.slurm(site, "squeue", "--json"))["jobs"]
        return jobs

    def accounted_starts(self, site: str) -> dict[int, list[float]]:
        """Start times per job id from `sacct -c` (the jobcomp file; ids repeat across sandbox restarts)."""
        out = self.slurm(site, "sacct", "-c", "-n", "-P", "-o", "jobid,state,start", check=False)
        starts: dict[int, list[float]] = {}
        for line in out.splitlines():
            fields = line.split("|")
            if len(fields) < 3 or not fields[0].isdigit() or fields[2] in ("", "Unknown", "None"):
                continue
            if fields[1].split()[0] not in STARTED_STATES:
                continue
            try:
                started = datetime.strptime(fields[2], "%Y-%m-%dT%H:%M:%S").timestamp()
            except ValueError:
                continue
            starts.setdefault(int(fields[0]), []).append(started)
        return starts

    def active_jobs(self, site: str) -> list[str]:
        out = self.slurm(site, "squeue", "-h", "-u", self.user, "-o", "%i %T")
        return [line for line in out.splitlines() if line.split()[-1] in SANDBOX_USER_STATES_ACTIVE]

    def node_states(self, site: str) -> list[str]:
        return self.slurm(site, "sinfo", "-h", "-N", "-o", "%t").split()

    def clear(self, timeout_s: float = 90.0) -> float:
        """Cancel every job of the sandbox user; return once no job is left and every node is idle."""
        started = time.monotonic()
        for site in self.confs:
            self.slurm(site, "scancel", f"--user={self.user}")
        while True:
            busy = {
                site: (self.active_jobs(site), [s for s in self.node_states(site) if s != "idle"])
                for site in self.confs
            }
            if not any(jobs or nodes for jobs, nodes in busy.values()):
                return time.monotonic() - started
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"sandbox not idle after {timeout_s:.0f} s: {busy}")
            for site, (jobs, _) in busy.items():
                if jobs:
                    self.slurm(site, "scancel", f"--user={self.user}")
            time.sleep(0.5)


class StartWatcher:
    """Polls squeue (every site, once a second) and keeps the real start time of every job seen started."""

    def __init__(self, sites: Sites, names: Iterable[str], interval_s: float = 1.0) -> None:
        self.sites = sites
        self.names = tuple(names)
        self.interval_s = interval_s
        self.starts: dict[tuple[str, int], float] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, name="start-watcher", daemon=True)

    def __enter__(self) -> StartWatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)

    def poll(self) -> None:
        for site in self.names:
            try:
                jobs = self.sites.jobs(site)
            except (RuntimeError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
                self.errors.append(f"{site}: {exc}")
                continue
            with self.lock:
                for job in jobs:
                    if job.get("job_state") in STARTED_STATES and int(job.get("start_time") or 0) > 0:
                        self.starts.setdefault((site, int(job["job_id"])), float(job["start_time"]))

    def start_of(self, site: str, job_id: int) -> float | None:
        with self.lock:
            return self.starts.get((site, job_id))

    def _run(self) -> None:
        while not self.stop_event.is_set():
            self.poll()
            self.stop_event.wait(self.interval_s)


# --- One run of one policy ----------------------------------------------------------------


@dataclass
class Submitted:
    job: Job
    chosen: str | None  # the baseline's choice; None for aif
    submitted_at: float  # wall-clock time just before the aif submit process started
    site: str = ""
    slurm_job_id: int = 0
    error: str = ""
    start: float | None = None
    censored: bool = False
    placement: dict[str, Any] | None = None  # aif's own answer (aif policy only), for --trace

    @property
    def wait(self) -> float | None:
        return None if self.start is None else self.start - self.submitted_at


@dataclass
class RunResult:
    policy: str
    jobs: list[Submitted]
    snapshot: dict[str, QueueInfo] = field(default_factory=dict)
    seconds: float = 0.0

    def waits(self) -> list[float]:
        return [w for j in self.jobs if (w := j.wait) is not None]

    def summary(self) -> dict[str, Any]:
        mean, p90 = mean_p90(self.waits())
        placed: dict[str, int] = {}
        for j in self.jobs:
            if j.site:
                placed[j.site] = placed.get(j.site, 0) + 1
        return {
            "policy": self.policy,
            "jobs": len(self.jobs),
            "measured": len(self.waits()),
            "censored": sum(1 for j in self.jobs if j.censored),
            "failed": sum(1 for j in self.jobs if j.error),
            "mean_wait_s": mean,
            "p90_wait_s": p90,
            "placed": dict(sorted(placed.items())),
            "seconds": round(self.seconds, 1),
        }


Chooser = Callable[[Iterable[str], int], str]


@dataclass
class Bench:
    sites: Sites
    aif: str
    env: dict[str, str]
    specs_dir: Path
    workroot: str
    eligible: Callable[[Path], list[str]]
    say: Callable[[str], None]
    seed: int
    deadline_s: float
    trace: bool = False

    def spec_file(self, job: Job) -> Path:
        path = self.specs_dir / f"{job.name}.toml"
        if not path.exists():
            path.write_text(spec_text(job, self.workroot))
        return path

    def submit_background(self, background: Mapping[str, Sequence[Job]]) -> list[dict[str, Any]]:
        answers: list[dict[str, Any]] = []
        for site, jobs in background.items():
            argv = [
                self.aif,
                "submit",
                "--json",
                "--no-coalesce",
                "--site",
                site,
                *(str(self.spec_file(j)) for j in jobs),
            ]
            result = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=120)
            if result.returncode != 0:
                raise RuntimeError(f"background at {site}: rc {result.returncode}: {result.stderr.strip()}")
            answers.extend(json.loads(result.stdout))
        return answers

    def wait_background(self, designed: Designed, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            counts = {}
            for site in designed.background:
                states = [line.split()[-1] for line in self.sites.active_jobs(site)]
                counts[site] = (states.count("RUNNING"), states.count("PENDING"))
            if all(
                counts[s] == (designed.expect_running[s], designed.expect_pending[s])
                for s in designed.background
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"designed background not in place after {timeout_s:.0f} s: {counts}")
            time.sleep(0.2)

    def chooser(self, policy: str, snapshot: dict[str, QueueInfo]) -> Chooser | None:
        if policy == "aif":
            return None
        if policy == "random":
            return RandomChoice(random.Random(self.seed)).choose
        if policy == "roundrobin":
            return RoundRobin(tuple(sorted(self.sites.confs))).choose
        if policy == "fastestqueue":
            return FastestQueue(dict(snapshot)).choose
        raise ValueError(policy)

    def run(self, policy: str, jobs: Sequence[Job], background: Designed | None = None) -> RunResult:
        self.say(f"{policy}: sandbox idle after {self.sites.clear():.1f} s")
        started = time.monotonic()
        if background is not None:
            self.submit_background(background.background)
            self.wait_background(background)
        # Read at the start of the burst, as ARC's client does once per bulk (used by fastestqueue only).
        snapshot = {site: self.sites.queue_info(site) for site in GPU_SITES}
        choose = self.chooser(policy, snapshot)
        specs = [self.spec_file(job) for job in jobs]
        eligible = [self.eligible(spec) for spec in specs]
        procs: list[tuple[Submitted, subprocess.Popen[str]]] = []
        with StartWatcher(self.sites, GPU_SITES) as watcher:
            t0 = time.monotonic()
            for job, spec, allowed in sorted(
                zip(jobs, specs, eligible, strict=True), key=lambda x: x[0].offset_s
            ):
                pause = t0 + job.offset_s - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                chosen = choose(allowed, job.gpus) if choose is not None else None
                argv = [self.aif, "submit", "--json", *(("--site", chosen) if chosen else ()), str(spec)]
                entry = Submitted(job, chosen, time.time())
                proc = subprocess.Popen(
                    argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
                procs.append((entry, proc))
            for entry, proc in procs:
                try:
                    out, err = proc.communicate(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, err = proc.communicate()
                    entry.error = "aif submit did not finish within 120 s"
                    continue
                try:
                    [answer] = json.loads(out)
                    entry.site = str(answer["site"])
                    entry.slurm_job_id = int(answer["slurm_job_id"])
                    if isinstance(answer.get("placement"), dict):
                        entry.placement = answer["placement"]
                except (ValueError, KeyError, TypeError):
                    entry.error = f"rc {proc.returncode}: {(err or out).strip()[-300:]}"
            submitted = [e for e, _ in procs if not e.error]
            run_deadline = t0 + self.deadline_s
            while time.monotonic() < run_deadline:
                for e in submitted:
                    if e.start is None:
                        e.start = watcher.start_of(e.site, e.slurm_job_id)
                if all(e.start is not None for e in submitted):
                    break
                time.sleep(0.5)
            watcher.poll()
        missing = [
            e for e in submitted if e.start is None and watcher.start_of(e.site, e.slurm_job_id) is None
        ]
        accounted = {site: self.sites.accounted_starts(site) for site in {e.site for e in missing}}
        for e in submitted:
            if e.start is None:
                e.start = watcher.start_of(e.site, e.slurm_job_id)
            if e.start is None:
                later = [
                    s for s in accounted.get(e.site, {}).get(e.slurm_job_id, []) if s >= e.submitted_at - 2
                ]
                e.start = later[-1] if later else None
            if e.start is None:  # not started by the deadline: its wait so far, a lower bound
                e.start = time.time()
                e.censored = True
        for entry, _ in procs:
            if entry.error:
                self.say(f"{policy}: {entry.job.name}: {entry.error}")
        result = RunResult(policy, [e for e, _ in procs], snapshot, time.monotonic() - started)
        if self.trace:
            for line in trace_lines(result):
                self.say(line)
        s = result.summary()
        self.say(
            f"{policy}: mean {s['mean_wait_s']:.1f} s, p90 {s['p90_wait_s']:.1f} s, placed {s['placed']},"
            f" {s['censored']} censored, {s['failed']} failed, run {result.seconds:.0f} s"
        )
        return result


# --- Output --------------------------------------------------------------------------------


def trace_lines(result: RunResult) -> list[str]:
    """One line per job, in arrival order: where it went, its wait, and (aif) each site's score and why."""
    lines = []
    for e in sorted(result.jobs, key=lambda e: e.job.offset_s):
        j = e.job
        wait = "-" if e.wait is None else f"{'>=' if e.censored else ''}{e.wait:.1f}"
        head = (
            f"trace {result.policy} {j.name} t={j.offset_s:5.1f} gpus={j.gpus} run={j.runtime_s}s"
            f" wall={j.walltime_min}m -> {e.site.removeprefix('sandbox-') or '?'} wait={wait}"
        )
        lines.append(head + (f" ERROR {e.error}" if e.error else ""))
        for scored in (e.placement or {}).get("ranking", []):
            reasons = " | ".join(scored.get("reasons", []))
            lines.append(f"    {scored['site'].removeprefix('sandbox-')}: {scored['score']} s: {reasons}")
    return lines


def fmt(value: float, censored: bool) -> str:
    if math.isnan(value):
        return "-"
    return f"{'>=' if censored else ''}{value:.1f}"


def table(case: str, results: Mapping[str, RunResult], about: str) -> str:
    rows = {p: r.summary() for p, r in results.items()}
    base = rows["aif"]["mean_wait_s"]
    lines = [
        f"\n{case}: {about}",
        f"{'policy':14} {'jobs':>5} {'mean s':>8} {'p90 s':>8} {'mean/aif':>9}  placed",
    ]
    for policy, s in rows.items():
        ratio = s["mean_wait_s"] / base if base and not math.isnan(base) else math.nan
        placed = ", ".join(f"{site.removeprefix('sandbox-')} {n}" for site, n in s["placed"].items())
        notes = []
        if s["censored"]:
            notes.append(f"{s['censored']} not started by the deadline")
        if s["failed"]:
            notes.append(f"{s['failed']} failed to submit")
        lines.append(
            f"{policy:14} {s['measured']:>5} {fmt(s['mean_wait_s'], s['censored'] > 0):>8}"
            f" {fmt(s['p90_wait_s'], s['censored'] > 0):>8} {ratio:>9.2f}  {placed}"
            + (f"  ({'; '.join(notes)})" if notes else "")
        )
    return "\n".join(lines)


def goal_ratios(results: Mapping[str, Mapping[str, RunResult]]) -> list[dict[str, Any]]:
    out = []
    for case, policy, goal in GOALS:
        if case not in results or "aif" not in results[case] or policy not in results[case]:
            continue
        aif = results[case]["aif"].summary()["mean_wait_s"]
        other = results[case][policy].summary()["mean_wait_s"]
        ratio = aif / other if other else math.nan
        out.append(
            {"case": case, "versus": policy, "aif_over": round(ratio, 3), "goal": goal, "met": ratio <= goal}
        )
    return out


def ratio_line(results: Mapping[str, Mapping[str, RunResult]]) -> str:
    parts = []
    for case, runs in results.items():
        if "aif" not in runs:
            continue
        aif = runs["aif"].summary()["mean_wait_s"]
        ratios = []
        for policy in [p for p in POLICIES[1:] if p in runs]:
            other = runs[policy].summary()["mean_wait_s"]
            ratios.append(f"aif/{policy} {aif / other if other else math.nan:.2f}")
        parts.append(f"{case}: " + ", ".join(ratios))
    goals = "; ".join(
        f"{g['case']} aif/{g['versus']} <= {g['goal']}: {'met' if g['met'] else 'NOT met'}"
        for g in goal_ratios(results)
    )
    return "ratios of mean wait: " + " | ".join(parts) + f"  [goals: {goals}]"


# --- Main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke run (12-job burst, short designed case)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument(
        "--seed", type=int, default=2026, help="seed of the workload and of the random policy"
    )
    parser.add_argument("--case", choices=("burst", "designed", "both"), default="both")
    parser.add_argument(
        "--policies", default=",".join(POLICIES), help="comma-separated subset (for experiments)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="replay each case this many times, the policies interleaved; every replay's jobs pooled",
    )
    parser.add_argument(
        "--snapshot-ttl", type=int, default=None, help="aif's [federation] snapshot_ttl_s (default: shipped)"
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="print (stderr) each job's site and wait, and for aif each site's score and reasons",
    )
    args = parser.parse_args()
    policies = [p for p in args.policies.split(",") if p in POLICIES]
    if os.geteuid() != 0:
        print("bench: run as root (it starts the sandbox and cancels its jobs)", file=sys.stderr)
        return 2
    bench_started = time.monotonic()

    def say(line: str) -> None:
        print(f"[placement] {line}", file=sys.stderr, flush=True)

    from gateway.federation.ranking import static_reasons
    from gateway.profile_rules import load_sites
    from gateway.sandbox import manager
    from gateway.spec import load_spec

    manager.up(progress=lambda line: say(f"sandbox: {line}"))
    facts = manager.facts()
    sites = Sites({s.name: str(s.slurm_conf) for s in facts.sites}, facts.sites[0].user)
    for site in GPU_SITES:
        config = sites.slurm(site, "scontrol", "show", "config")
        if "batch_sched_delay=0" not in config or "bf_interval=2" not in config:
            print(f"bench: {site} does not use the sandbox's short scheduling", file=sys.stderr)
            return 2

    # A private AIF_HOME for the bench's ledger, seeing the same sandbox sites.
    work = Path(tempfile.mkdtemp(prefix="aif-placement-"))
    home = work / "home"
    for part in ("profiles", "config.d"):
        shutil.copytree(facts.aif_home / part, home / part)
    if args.snapshot_ttl is not None:
        (home / "config.d" / "bench.toml").write_text(f"[federation]\nsnapshot_ttl_s = {args.snapshot_ttl}\n")
    env = {**os.environ, "AIF_HOME": str(home)}
    profiles, config = load_sites(home)
    specs_dir = work / "specs"
    specs_dir.mkdir()

    def eligible(spec_path: Path) -> list[str]:
        spec = load_spec(spec_path)
        return sorted(name for name, p in profiles.items() if not static_reasons(spec, p, config))

    tag = uuid.uuid4().hex[:8]
    bench = Bench(
        sites=sites,
        aif=str(Path(sys.executable).parent / "aif"),
        env=env,
        specs_dir=specs_dir,
        workroot=f"bench-placement-{tag}",
        eligible=eligible,
        say=say,
        seed=args.seed,
        deadline_s=120.0 if args.quick else 240.0,
        trace=args.trace,
    )
    if args.quick:
        burst = draw_burst(12, 6.0, 2.0, 12.0, args.seed)
    else:
        burst = draw_burst(40, 25.0, 4.0, 60.0, args.seed)
    designed = designed_case(args.quick)
    cases: dict[str, tuple[list[Job], Designed | None, str]] = {}
    if args.case in ("burst", "both"):
        cases["burst"] = (burst, None, describe_workload(burst))
    if args.case in ("designed", "both"):
        cases["designed"] = (
            designed.probes,
            designed,
            "north: 2 long 4-GPU jobs running, none waiting; south: 8 short 1-GPU jobs running, 7 waiting;"
            f" {len(designed.probes)} 1-GPU probes measured",
        )
    results: dict[str, dict[str, RunResult]] = {}
    try:
        for case, (jobs, background, about) in cases.items():
            say(f"{case}: {about}")
            results[case] = {}
            for policy in [p for _ in range(max(args.repeat, 1)) for p in policies]:
                run = bench.run(policy, jobs, background)
                earlier = results[case].get(policy)
                if earlier is not None:  # pool the replays: one mean over every job of every replay
                    run = RunResult(
                        policy, [*earlier.jobs, *run.jobs], earlier.snapshot, earlier.seconds + run.seconds
                    )
                results[case][policy] = run
                if background is not None:
                    snap = results[case][policy].snapshot
                    queues = ", ".join(f"{s} {asdict(q)}" for s, q in snap.items())
                    say(f"{policy}: queues at the start: {queues}")
    finally:
        with_error = None
        try:
            sites.clear()
        except RuntimeError as exc:
            with_error = exc
        for site in GPU_SITES:
            shutil.rmtree(f"/home/{sites.user}/aif/{site}/{bench.workroot}", ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        if with_error is not None:
            say(f"cleanup: {with_error}")
    seconds = time.monotonic() - bench_started
    if args.json:
        print(
            json.dumps(
                {
                    "quick": args.quick,
                    "seed": args.seed,
                    "cases": {
                        case: {
                            "about": cases[case][2],
                            "workload": [asdict(j) for j in cases[case][0]],
                            "policies": {
                                p: {
                                    **r.summary(),
                                    "snapshot": {s: asdict(q) for s, q in r.snapshot.items()},
                                    "jobs": [
                                        {
                                            "name": j.job.name,
                                            "site": j.site,
                                            "slurm_job_id": j.slurm_job_id,
                                            "wait_s": None if j.wait is None else round(j.wait, 2),
                                            "censored": j.censored,
                                            "error": j.error,
                                        }
                                        for j in r.jobs
                                    ],
                                }
                                for p, r in runs.items()
                            },
                        }
                        for case, runs in results.items()
                    },
                    "goals": goal_ratios(results),
                    "seconds": round(seconds, 1),
                    "within_cap": seconds <= TIME_CAP_S,
                },
                indent=2,
            )
        )
        return 0
    for case, runs in results.items():
        print(table(case, runs, cases[case][2]))
    print()
    print(ratio_line(results))
    cap = "within" if seconds <= TIME_CAP_S else "OVER"
    print(f"placement bench took {seconds:.0f} s ({cap} the {TIME_CAP_S // 60}-minute cap)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
