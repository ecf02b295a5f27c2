"""`aif profile check SITE`: does a site's profile agree with what the site really has?

ONE command at the site (``gateway.slurm.partitions.check_argv``): sinfo and
scontrol for the partitions and nodes, and ``sbatch --test-only`` of a tiny
job per profile partition. The test jobs are rendered by the normal renderer
from a built-in spec, so their account, QOS and partition directives are the
ones real jobs get. Reading and comparing are pure (``gateway.slurm.partitions``,
``gateway.slurm.profile_compare``);
this module only puts them together.
"""

from __future__ import annotations

from dataclasses import replace

from gateway.api import login_user
from gateway.context import Context
from gateway.errors import AifError, UsageError
from gateway.profile_rules import resolve_account
from gateway.profiles import Partition, QosRule, SiteProfile, get_profile
from gateway.record import Record
from gateway.rendering import render_batch_script
from gateway.site import SlurmCliBackend
from gateway.slurm.partitions import TestOnly, read_test_only
from gateway.slurm.profile_compare import Mismatch, compare_profile
from gateway.spec import JobSpec, parse_spec
from gateway.tomlcheck import format_walltime

TEST_JOB_NAME = "aif-profile-check"
TEST_JOB_ID = "aif-check"  # fills {id} in the (never created) workdir
TEST_WALLTIME_S = 600


class TestJob(Record):
    """The test job of one partition: its script, or why none could be rendered."""

    partition: str
    script: str
    problem: str = ""


def test_jobs(profile: SiteProfile, *, account: str | None, user: str) -> list[TestJob]:
    """One small job per partition: 1 GPU on GPU partitions, else 1 CPU; 10 minutes at most.

    Each is rendered for a copy of the profile holding only that partition and
    its QOS rules, so the renderer cannot pick another one. Where the
    partition's QOS rules all start above one node or end below ten minutes,
    the job takes the smallest size and time some rule allows.
    """
    jobs = []
    for partition in profile.partitions:
        rules = tuple(r for r in profile.qos_rules if r.partition == partition.name)
        only = replace(profile, partitions=(partition,), qos_rules=rules)
        try:
            rendered = render_batch_script(
                _test_spec(partition, rules), only, account=account, user=user, job_id=TEST_JOB_ID
            )
        except AifError as exc:
            jobs.append(TestJob(partition.name, "", exc.message))
        else:
            jobs.append(TestJob(partition.name, rendered.script))
    return jobs


def _test_spec(partition: Partition, rules: tuple[QosRule, ...]) -> JobSpec:
    nodes = min((r.min_nodes for r in rules), default=1)
    walltime = min(
        [TEST_WALLTIME_S, partition.max_walltime_seconds, *(r.max_walltime_seconds for r in rules)]
    )
    return parse_spec(
        {
            "job": {"name": TEST_JOB_NAME, "command": ["true"]},
            "resources": {
                "nodes": nodes,
                "gpus_per_node": 1 if partition.gpus_per_node else 0,
                "walltime": format_walltime(walltime),
            },
        },
        source="aif profile check",
    )


class ProfileCheckReport(Record):
    """Where a profile and its site disagree (``mismatches``), what else is worth knowing
    (``notes``), and whether a small job could run in each partition (``test_only``)."""

    site: str
    profile_source: str
    mismatches: tuple[Mismatch, ...]
    notes: tuple[str, ...]
    test_only: tuple[TestOnly, ...]

    @property
    def refused(self) -> tuple[TestOnly, ...]:
        return tuple(t for t in self.test_only if not t.ok)

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.refused

    def summary(self) -> str:
        """One line: what is wrong, for the error line."""
        parts = []
        if self.mismatches:
            count = len(self.mismatches)
            parts.append(f"{count} {'mismatch' if count == 1 else 'mismatches'}")
        if self.refused:
            count = len(self.refused)
            parts.append(f"{count} test {'job' if count == 1 else 'jobs'} refused")
        return f"site {self.site}: the profile disagrees with the site: {', '.join(parts)}"

    def to_json(self) -> dict[str, object]:
        return {
            "site": self.site,
            "profile": self.profile_source,
            "ok": self.ok,
            "mismatches": [m.to_json() for m in self.mismatches],
            "notes": list(self.notes),
            "test_only": [
                {"partition": t.partition, "ok": t.ok, "start": t.start or None, "message": t.message}
                for t in self.test_only
            ],
        }


def check_profile(ctx: Context, site: str) -> ProfileCheckReport:
    """Ask the site (one command) and compare; raises SiteUnreachable (exit 5) if it cannot be asked."""
    profile = get_profile(ctx.profiles, site)
    if profile.batch_system != "slurm":
        raise UsageError(f"site {site} runs {profile.batch_system}: aif can only check Slurm sites")
    access = ctx.config.access(site)
    jobs = test_jobs(profile, account=resolve_account(profile, access), user=login_user(profile, ctx.config))
    backend = ctx.backend(site)
    if not isinstance(backend, SlurmCliBackend):
        raise UsageError(
            f"site {site} is reached through {access.transport}: `aif profile check` runs Slurm's "
            "commands, so it needs the ssh or local transport"
        )
    snapshot = backend.survey([job.script for job in jobs if job.script])
    answers = iter(snapshot.test_only)
    results = []
    for job in jobs:
        if job.script:
            returncode, answer = next(answers)
            results.append(read_test_only(job.partition, returncode, answer))
        else:
            results.append(TestOnly(job.partition, False, "", f"not run: {job.problem}"))
    comparison = compare_profile(profile, snapshot)
    return ProfileCheckReport(
        site=site,
        profile_source=profile.source,
        mismatches=comparison.mismatches,
        notes=comparison.notes,
        test_only=tuple(results),
    )
