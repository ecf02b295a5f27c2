"""The lifecycle over one Context: fake transports, a temporary ledger, a fake clock.

A small simulated site answers the submission program, the record reader and
squeue the way the real programs do (the real ones are tested on the sandbox):
claims are created exclusively, answers appended, fences proven.
"""

from __future__ import annotations

import io
import tarfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from gateway import slurm
from gateway.config import SiteAccess, UserConfig
from gateway.context import Context, Timing
from gateway.errors import Interrupted, SiteUnreachable, UsageError
from gateway.ledger import Ledger
from gateway.lifecycle import refresh, submit
from gateway.profiles import load_profile
from gateway.site import SlurmCliBackend
from gateway.slurm import jobcomp
from gateway.states import JobState
from gateway.transports.base import CommandResult
from gateway.transports.fake import FakeCall, FakeTransport

REPO = Path(__file__).resolve().parents[2]
SITE = "testsite"


@dataclass
class FakeClock:
    at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    ticks: float = 0.0

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return self.ticks

    def sleep(self, seconds: float) -> None:
        self.ticks += seconds
        self.at += timedelta(seconds=seconds)


@dataclass
class SimulatedSite:
    """The site's files (its record) and queue, and what goes wrong there.

    An array of specs in a bundle is claimed and sent as the real program does
    (tests/unit/test_arrays.py): its tasks join the queue as ``ID_TASK``.
    """

    claims: dict[str, list[str]] = field(default_factory=dict)  # path -> lines
    queue: list[tuple[str, str, str]] = field(default_factory=list)  # (id, token, name)
    next_id: int = 100
    controller_down: bool = False
    stop_after: int | None = None  # the program dies after this many items (answers lost)
    max_array_size: int = 1001
    die_after_array_sbatch: bool = False  # an array was sent, then the program died: no answers
    jobcomp: list[str] = field(default_factory=list)  # the job-completion log's lines
    sbatch_calls: int = 0

    def submission(self, call: FakeCall) -> CommandResult:
        with tarfile.open(fileobj=io.BytesIO(call.stdin or b"")) as bundle:
            files = {m.name: bundle.extractfile(m).read() for m in bundle.getmembers() if m.isfile()}  # type: ignore[union-attr]
        journal = files.get("journal", b"").rstrip(b"\0").decode()
        items = files["items"].decode().split("\0")[:-1]
        scripts = files["scripts"].decode().split("\0")[:-1]
        lines: list[str] = []
        index = 0
        slot = 0
        at = 0
        while at < len(items):
            if self.stop_after is not None and index >= self.stop_after:
                return CommandResult(call.argv, 129, "\n".join(lines) + "\n", "")
            kind, at = items[at], at + 3 + int(items[at + 2])  # past S/A, workdir, the extra args
            if kind == "A":
                members = int(items[at + 1])
                fields = [items[at], *items[at + 2 : at + 2 + 3 * members]]
                at += 2 + 3 * members
                if not self._array(journal, fields, slot, lines):
                    return CommandResult(call.argv, 129, "\n".join(lines) + "\n", "")
                slot += members
                index += 1
                continue
            claim, token, aif_id = items[at : at + 3]
            at += 3
            path = f"{journal}/{claim}"
            if path in self.claims:
                lines.append(f"{slot}\t-2\t{self.claims[path][0]}")
            else:
                self.claims[path] = [f"intent\t{token}\t{aif_id}"]
                if self.controller_down:
                    answer = (
                        "1\tsbatch: error: Batch job submission failed: Unable to contact slurm controller"
                    )
                else:
                    self.next_id += 1
                    self.sbatch_calls += 1
                    name = scripts[index].split("--job-name=")[1].split("\n")[0]
                    self.queue.append((str(self.next_id), token, name))
                    answer = f"0\t{self.next_id}"
                self.claims[path].append(f"answer\t{answer}")
                lines.append(f"{slot}\t{answer}")
            index += 1
            slot += 1
        return CommandResult(call.argv, 0, "\n".join(lines) + "\n", "")

    def _array(self, journal: str, fields: list[str], slot: int, lines: list[str]) -> bool:
        """An array item as submit.sh handles it; False when the program "dies" after sbatch."""
        array_token, members = fields[0], (len(fields) - 1) // 3
        if members > self.max_array_size:
            lines += [
                f"{slot + m}\t-4\t{members} tasks, over MaxArraySize={self.max_array_size}"
                for m in range(members)
            ]
            return True
        tasks = []
        for m in range(members):
            claim, token, aif_id = fields[1 + 3 * m : 4 + 3 * m]
            path = f"{journal}/{claim}"
            if path in self.claims:
                lines.append(f"{slot + m}\t-2\t{self.claims[path][0]}")
                continue
            self.claims[path] = [f"intent\t{token}\t{aif_id}\t{array_token}\t{m}"]
            tasks.append(m)
        if not tasks:
            return True
        self.next_id += 1
        self.sbatch_calls += 1
        name = "aif-array." + array_token.removeprefix("aif-tok-")
        self.queue += [(f"{self.next_id}_{m}", array_token, name) for m in tasks]
        if self.die_after_array_sbatch:
            return False
        for m in tasks:
            claim = fields[1 + 3 * m]
            self.claims[f"{journal}/{claim}"].append(f"answer\t0\t{self.next_id}_{m}")
            lines.append(f"{slot + m}\t0\t{self.next_id}_{m}")
        return True

    def record(self, call: FakeCall) -> CommandResult:
        args = list(call.argv[4:])
        out = []
        directories = []
        while args:
            if args[0] == "fence":
                _, directory, claim, token, *args = args
                path = f"{directory}/{claim}"
                if path not in self.claims:
                    self.claims[path] = [f"fence\t{token}"]
                    out.append(f"fenced\t{directory}\t{claim}")
            else:
                _, directory, *args = args
                directories.append(directory)
        for index, directory in enumerate(directories):
            for path, content in sorted(self.claims.items()):
                if path.rpartition("/")[0] == directory:
                    out += [f"line\t{index}\t{path.rpartition('/')[2]}\t{line}" for line in content]
        return CommandResult(call.argv, 0, "\n".join([*out, "end"]) + "\n", "")

    def squeue(self, call: FakeCall) -> CommandResult:
        sep, end = slurm.FIELD_SEPARATOR, slurm.RECORD_END
        rows = []
        for job_id, token, name in self.queue:
            base, _, task = job_id.partition("_")
            raw = str(int(base) * 1000 + int(task)) if task else job_id
            ids = [raw, job_id, base, task or "N/A"]
            fields = [*ids, "PENDING", "standard", "", "", "", "", "0", "None"]
            rows.append(sep.join([*fields, f"aif:{token}", name]) + end)
        return CommandResult(call.argv, 0, "\n".join(rows) + ("\n" if rows else ""), "")

    def jobcomp_log(self, call: FakeCall) -> CommandResult:
        names = call.argv[4:]
        found = [line for line in self.jobcomp if any(f"Name={n} JobState=" in line for n in names)]
        return CommandResult(call.argv, 0, "\n".join([*found, "@end"]) + "\n", "")

    def scancel(self, call: FakeCall) -> CommandResult:
        """scancel_by_name.sh: a task by its id once its array's name is checked, a job by id and name."""
        args = list(call.argv[4:])
        while args:
            name, job_id, *args = args
            self.queue = [q for q in self.queue if not (q[0] == job_id and (q[2] == name or not name))]
        return CommandResult(call.argv, 0, "", "")


@pytest.fixture
def site() -> SimulatedSite:
    return SimulatedSite()


def make_context(site: SimulatedSite, clock: FakeClock, ledger_path: Path) -> Context:
    fake = FakeTransport(SITE)
    fake.respond(["bash", "-c", slurm.submission_program()], handler=site.submission)
    fake.respond(["bash", "-c", jobcomp.jobcomp_tasks_argv(["x"])[2]], handler=site.jobcomp_log)
    fake.respond(["bash", "-c", slurm.scancel_by_name_argv([("1", "x")])[2]], handler=site.scancel)
    fake.respond(["bash", "-c"], handler=site.record)
    fake.respond(["squeue"], handler=site.squeue)
    fake.respond(["sacct"], stdout="")  # nothing has finished at the simulated site
    profile = load_profile(REPO / "tests" / "data" / "profiles" / "testsite.toml")
    config = UserConfig(sites={SITE: SiteAccess(account="proj_1", user="me")})
    return Context(
        profiles={SITE: profile},
        config=config,
        ledger_opener=lambda: Ledger(ledger_path),
        backend_factory=lambda name, timeout: SlurmCliBackend(transport=fake, accounting="jobcomp"),
        clock=clock,
        timing=Timing(just_submitted_grace_s=0, lost_submission_after_s=0),
    )


def intent_fields(**extra: object) -> dict[str, object]:
    """What record_intents needs for one job of the test site."""
    return {
        "site": SITE,
        "name": "x",
        "spec_path": "x.toml",
        "spec_hash": "0" * 64,
        "workdir": "",
        "outputs": (),
        "stdout_path": "",
        "array_size": None,
        "depends_on": None,
        **extra,
    }


def specs(tmp_path: Path, count: int) -> list[str]:
    paths = []
    for i in range(count):
        path = tmp_path / f"s{i}.toml"
        path.write_text(f'[job]\nname = "s{i}"\ncommand = ["echo", "{i}"]\n')
        paths.append(str(path))
    return paths


def test_program_died_mid_batch_then_status_and_rerun_send_each_spec_once(
    site: SimulatedSite, tmp_path: Path
) -> None:
    """Defects 2 and 3 at unit level: answers lost after 3 of 5; the record settles all five."""
    site.stop_after = 3
    ctx = make_context(site, FakeClock(), tmp_path / "l.sqlite")
    # Each spec its own job (tests/unit/test_arrays.py has this for arrays of specs).
    report = submit(ctx, specs(tmp_path, 5), site=SITE, key="k1", coalesce=False)
    states = [j.job.state for j in report.jobs]
    # Items 3 and 4 had no intent: the settling fenced them, proving them unsent.
    assert states == [JobState.PENDING] * 3 + [JobState.NOT_SENT] * 2
    site.stop_after = None
    again = submit(ctx, specs(tmp_path, 5), site=SITE, key="k1", coalesce=False)
    assert [j.how for j in again.jobs] == ["sent before"] * 3 + ["submitted"] * 2
    assert len(site.queue) == 5 and len({name for _, _, name in site.queue}) == 5


def test_another_machine_with_the_same_key_adopts_instead_of_sending(
    site: SimulatedSite, tmp_path: Path
) -> None:
    first = make_context(site, FakeClock(), tmp_path / "a.sqlite")
    submit(first, specs(tmp_path, 2), site=SITE, key="shared", coalesce=False)
    other = make_context(site, FakeClock(), tmp_path / "b.sqlite")  # a fresh ledger: another machine
    report = submit(other, specs(tmp_path, 2), site=SITE, key="shared", coalesce=False)
    assert [j.how for j in report.jobs] == ["adopted from the site's record"] * 2
    assert [j.job.id for j in report.jobs] == [j.id for j in first.ledger.jobs_with_key("shared")]
    assert len(site.queue) == 2


def test_same_key_with_other_content_is_refused(site: SimulatedSite, tmp_path: Path) -> None:
    ctx = make_context(site, FakeClock(), tmp_path / "l.sqlite")
    [path] = specs(tmp_path, 1)
    submit(ctx, [path], site=SITE, key="k2")
    Path(path).write_text('[job]\nname = "s0"\ncommand = ["echo", "changed"]\n')
    with pytest.raises(UsageError, match=r"s0\.toml"):
        submit(ctx, [path], site=SITE, key="k2")
    assert len(site.queue) == 1


def test_controller_down_is_unreachable_not_rejected(site: SimulatedSite, tmp_path: Path) -> None:
    site.controller_down = True
    ctx = make_context(site, FakeClock(), tmp_path / "l.sqlite")
    [job] = submit(ctx, specs(tmp_path, 1), site=SITE).jobs
    assert job.job.state is JobState.UNREACHABLE and "Unable to contact" in job.job.message


def test_a_young_unanswered_claim_is_not_called_unsent(site: SimulatedSite, tmp_path: Path) -> None:
    """Only a proof makes a job "never submitted": before the grace period no fence is written."""
    clock = FakeClock()
    ctx = make_context(site, clock, tmp_path / "l.sqlite")
    ctx.timing = Timing(just_submitted_grace_s=30, lost_submission_after_s=120)
    [intent] = ctx.ledger.record_intents(
        [
            intent_fields(
                submission_key="k3",
                item="0123456789abcdef0123456789abcdef-0",
                journal_dir="/w/.aif/submissions/k3",
            )
        ]
    )
    refresh(ctx, [intent.id])
    assert ctx.ledger.get(intent.id).state is JobState.SUBMITTING and not site.claims
    clock.sleep(121)
    refresh(ctx, [intent.id])
    assert ctx.ledger.get(intent.id).state is JobState.NOT_SENT
    assert site.claims == {f"/w/.aif/submissions/k3/{intent.claim}": [f"fence\t{intent.token}"]}


def test_ctrl_c_says_what_was_sent_and_how_to_finish(
    site: SimulatedSite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_context(site, FakeClock(), tmp_path / "l.sqlite")

    def interrupted(self: SlurmCliBackend, items: object, journal_dir: str = "") -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(SlurmCliBackend, "submit", interrupted)
    paths = specs(tmp_path, 2)
    with pytest.raises(Interrupted) as caught:
        submit(ctx, paths, site=SITE, key="k4")
    assert "0 sent, 0 not sent, 2 unknown" in caught.value.message
    assert f"aif submit --key k4 {paths[0]} {paths[1]}" in caught.value.message


def test_an_unreachable_site_is_reported_not_raised(tmp_path: Path) -> None:
    clock = FakeClock()
    dead = FakeTransport(SITE)
    dead.fail_on_call(1)
    ctx = make_context(SimulatedSite(), clock, tmp_path / "l.sqlite")
    ctx.backend_factory = lambda name, timeout: SlurmCliBackend(transport=dead, accounting="jobcomp")
    [job] = ctx.ledger.record_intents([intent_fields()])
    ctx.ledger.mark_submitted(job.id, "7")
    report = refresh(ctx, [job.id])
    assert SITE in report.unreachable and "scripted failure" in report.unreachable[SITE]
    assert isinstance(SiteUnreachable("x"), SiteUnreachable)


class _Preparing:
    """A backend that only notes being prepared."""

    def __init__(self, site: str, prepared: list[str], done: threading.Event) -> None:
        self.site, self._prepared, self._done = site, prepared, done

    def prepare(self) -> None:
        self._prepared.append(self.site)
        if len(self._prepared) == 2:
            self._done.set()

    def close(self) -> None:
        return None


def test_prepare_opens_each_sites_backend_and_keeps_it(tmp_path: Path) -> None:
    prepared: list[str] = []
    done = threading.Event()
    made: list[str] = []

    def factory(site: str, _timeout: float) -> Any:
        made.append(site)
        if site == "broken":
            raise SiteUnreachable("no profile")  # left for the first real command
        return _Preparing(site, prepared, done)

    ctx = Context(
        profiles={},
        config=UserConfig(sites={}),
        ledger_opener=lambda: Ledger(tmp_path / "ledger.db"),
        backend_factory=factory,
    )
    ctx.prepare(["a", "broken", "b"])
    assert done.wait(5)
    assert sorted(prepared) == ["a", "b"]
    assert ctx.backend("a") is ctx.backend("a") and sorted(made).count("a") == 1
    ctx.close()
