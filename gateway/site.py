"""Talking to one site: its Slurm, through one transport (or pyslurm).

A :class:`SiteBackend` offers the handful of operations the lifecycle needs.
:class:`SlurmCliBackend` builds them from the pure Slurm dialect
(``gateway.slurm``) and a transport that only runs commands; the pyslurm
backend (``gateway.pyslurm_backend``) talks to libslurm directly
on a login node. Every query here is per site, never per job.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from gateway import journal, slurm
from gateway.config import SiteAccess
from gateway.errors import AifError, SiteUnreachable
from gateway.profiles import SiteProfile
from gateway.record import Record
from gateway.slurm import jobcomp
from gateway.states import JobState
from gateway.transports.base import DEFAULT_TIMEOUT, CommandHook, CommandResult, Progress, Transport

if TYPE_CHECKING:
    # Loaded where used: `aif status` never probes nor surveys a site (about 20 ms of imports).
    import gateway.slurm.probe as load_probe
    from gateway.slurm import partitions as partition_info
    from gateway.transports.mux import SharedTarget

SUBMIT_TIMEOUT = 300.0
# Exit statuses after which the submission program provably sent nothing: its own
# set-up failure, and the shell's "cannot execute" / "command not found".
_NOTHING_SENT_EXITS = frozenset({slurm.SUBMISSION_SETUP_FAILED, 126, 127})


class FileTransport(Transport, Protocol):
    """A transport that can also read and copy files back (SFTP or the local disk)."""

    def read_file(self, remote_path: str) -> bytes: ...

    def get_tree(self, remote_dir: str, local_dir: Path, progress: Progress | None = None) -> object: ...

    def get_file(self, remote_path: str, local_path: Path, progress: Progress | None = None) -> object: ...


class JobQuery(Record):
    """One job to look for at a site, with what proves a record is this job.

    While the job is in squeue, its ``token`` (Slurm keeps it as the job's
    comment) proves it; once it left squeue, Slurm's records of finished jobs
    keep no comment, so its ``slurm_name`` (which carries the aif id) does.
    ``slurm_name`` is '' for jobs submitted by an aif older than this proof.

    A spec sent as one task of an array (``gateway.arrays``) is asked for as
    ``ARRAYID_TASK`` with the array's token (``array_token``: every task of
    the array carries it) and the array's name: it is confirmed by the
    array's identity plus its task, never by any other task's record.
    ``token`` (the job's own) keys the answer.
    """

    slurm_job_id: str
    token: str
    slurm_name: str
    array_token: str = ""

    @property
    def task(self) -> int | None:
        """The task asked for, for a task of an array of specs (else None)."""
        _, sep, task = self.slurm_job_id.partition("_")
        return int(task) if self.array_token and sep and task.isdigit() else None

    @property
    def comment(self) -> str:
        """The comment that proves the job (or its array) in squeue."""
        return slurm.COMMENT_PREFIX + (self.array_token or self.token)


class Sighting(Record):
    """What a site says of one job: its record once its identity is confirmed, else why not."""

    record: slurm.JobRecord | None
    problem: str = ""
    in_queue: bool = False  # confirmed in squeue by its token (safe to signal)


class SiteBackend(Protocol):
    @property
    def site(self) -> str: ...

    def submit(
        self, items: Sequence[slurm.Submission], journal_dir: str = ""
    ) -> list[slurm.SubmissionOutcome]:
        """One outcome per item, one per member of an array (``slurm.answer_count``)."""
        ...

    def read_record(
        self, directories: Sequence[str], fences: Sequence[journal.Fence] = ()
    ) -> journal.RecordRead: ...

    def jobs(self, queries: Sequence[JobQuery]) -> dict[str, Sighting]:
        """A sighting per query, keyed by the query's token (a Slurm id may name two jobs)."""
        ...

    def cancel(self, targets: Sequence[tuple[str, str]]) -> None:
        """Cancel each ``(Slurm id, Slurm name)`` only while that id still names that job."""
        ...

    def find_names(self, names: Sequence[str], since: str) -> dict[str, str]:
        """name -> Slurm id of finished jobs carrying these names (the second proof), since a date."""
        ...

    def find_tokens(self, tokens: Sequence[str]) -> dict[str, str]: ...

    def find_arrays(self, names: Sequence[str], since: str) -> dict[str, str]:
        """array name -> the array's Slurm id, for arrays of specs that left the queue."""
        ...

    def probe(self, partitions: Sequence[str], script: str | None) -> load_probe.ProbeResult:
        """The site's load in one command, with Slurm's estimated start for ``script`` if given."""
        ...

    def test_only(self, script: str) -> load_probe.StartEstimate:
        """Slurm's estimated start for one more job shape (``sbatch --test-only``)."""
        ...

    def read_file(self, path: str, offset: int = 0) -> bytes: ...

    def fetch(self, remote: str, local: Path, progress: Progress | None = None) -> None: ...

    def prepare(self) -> None:
        """Start reaching the site in the background (logging in), so the first command
        finds it ready; a failure is that command's to report. Runs nothing there."""
        ...

    def close(self) -> None: ...


@dataclass
class SlurmCliBackend:
    """Slurm's own commands, run through any transport."""

    transport: FileTransport
    accounting: slurm.SacctSource  # where finished jobs are looked up
    timeout: float = DEFAULT_TIMEOUT  # for every query (a submission gets SUBMIT_TIMEOUT)
    submit_concurrency: int = 1  # sbatch at a time at the site (the profile's [slurm])

    @property
    def site(self) -> str:
        return self.transport.site

    def _run(
        self, argv: Sequence[str], stdin: bytes | None = None, timeout: float | None = None
    ) -> CommandResult:
        return self.transport.run(argv, stdin=stdin, timeout=timeout or self.timeout)

    def submit(
        self, items: Sequence[slurm.Submission], journal_dir: str = ""
    ) -> list[slurm.SubmissionOutcome]:
        """All items in ONE command: a bundle of three files on stdin (the items' fields, their
        scripts, the record's directory), one sbatch per item at the site, the profile's
        ``submit_concurrency`` at a time (an array of specs is one item, one sbatch); one
        outcome per job or member."""
        if not items:
            return []
        result = self._run(
            slurm.submission_argv(self.submit_concurrency, items),
            stdin=slurm.build_submission_bundle(items, journal_dir),
            timeout=max(SUBMIT_TIMEOUT, self.timeout),
        )
        outcomes = slurm.parse_submission_output(result.stdout, slurm.answer_count(items))
        if result.returncode in _NOTHING_SENT_EXITS and not any(o.ok for o in outcomes):
            # The program itself failed before any item (no bash, no mktemp, no tar): nothing was sent.
            # Any other failure may have come after an sbatch ran: its items stay unknown.
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise SiteUnreachable(
                f"site {self.site}: the submission program failed (exit {result.returncode}): "
                f"{detail[-1] if detail else 'no output'}"
            )
        return outcomes

    def read_record(
        self, directories: Sequence[str], fences: Sequence[journal.Fence] = ()
    ) -> journal.RecordRead:
        """The site's record of these submissions, in one command (fencing first)."""
        result = self._run(journal.read_record_argv(directories, fences))
        if not result.ok:
            raise SiteUnreachable(f"site {self.site}: reading its record failed: {_last_line(result)}")
        try:
            return journal.parse_record(result.stdout, len(directories))
        except journal.RecordUnreadable as exc:
            raise SiteUnreachable(f"site {self.site}: {exc}") from None

    def jobs(self, queries: Sequence[JobQuery]) -> dict[str, Sighting]:
        """Every job asked for, confirmed: one squeue, plus one sacct for those not confirmed in it.

        Keyed by token: after an id was reused, the ledger may hold two jobs with one Slurm id.
        """
        if not queries:
            return {}
        result = self._run(slurm.squeue_argv())
        if not result.ok:
            raise SiteUnreachable(f"site {self.site}: squeue failed: {_last_line(result)}")
        queue = slurm.parse_squeue(result.stdout)
        found = confirm_in_queue(queue, queries)
        missing = [q for q in queries if found[q.token].record is None]
        # sacct -c knows array tasks only by their raw ids (-j 7_0 answers with job 7, another
        # task), so there the tasks of arrays of specs are read from the job-completion log.
        by_log = [q for q in missing if q.task is not None] if self.accounting == "jobcomp" else []
        by_sacct = [q for q in missing if not (q.task is not None and self.accounting == "jobcomp")]
        for asked, read in ((by_sacct, self._sacct_records), (by_log, self._jobcomp_records)):
            if not asked:
                continue
            try:
                records = read(asked)
            except SiteUnreachable as exc:
                why = f"the site's accounting cannot be read ({exc.message})"
                for q in asked:
                    found[q.token] = Sighting(None, f"{found[q.token].problem}; {why}")
                continue
            found.update(confirm_in_accounting(records, asked, found))
        return found

    def _sacct_records(self, queries: Sequence[JobQuery]) -> list[slurm.JobRecord]:
        result = self._run(slurm.sacct_argv([q.slurm_job_id for q in queries], self.accounting))
        if not result.ok:
            raise SiteUnreachable(_last_line(result))
        return slurm.parse_sacct(result.stdout)

    def _jobcomp_records(self, queries: Sequence[JobQuery]) -> list[slurm.JobRecord]:
        """Array tasks of these queries' array names, from the job-completion log (one command)."""
        names = sorted({q.slurm_name for q in queries if q.slurm_name})
        if not names:
            return []
        result = self._run(jobcomp.jobcomp_tasks_argv(names))
        if not result.ok:
            raise SiteUnreachable(_last_line(result))
        try:
            return jobcomp.parse_jobcomp_tasks(result.stdout)
        except jobcomp.JobcompUnreadable as exc:
            raise SiteUnreachable(str(exc)) from None

    def cancel(self, targets: Sequence[tuple[str, str]]) -> None:
        """One command; scancel filtered by name per job (the controller re-checks identity)."""
        if not targets:
            return
        result = self._run(slurm.scancel_by_name_argv(targets))
        if not result.ok:
            raise SiteUnreachable(f"site {self.site}: scancel failed: {_last_line(result)}")

    def find_names(self, names: Sequence[str], since: str) -> dict[str, str]:
        """Slurm ids of finished jobs by name (an array by its lowest id), from one sacct."""
        if not names:
            return {}
        result = self._run(slurm.sacct_by_name_argv(names, self.accounting, since))
        if not result.ok:
            raise SiteUnreachable(f"site {self.site}: sacct failed: {_last_line(result)}")
        found: dict[str, str] = {}
        for record in slurm.parse_sacct(result.stdout):
            job_id = record.raw_job_id
            if record.name in names and (record.name not in found or int(job_id) < int(found[record.name])):
                found[record.name] = job_id
        return found

    def find_arrays(self, names: Sequence[str], since: str) -> dict[str, str]:
        """Slurm ids of finished arrays of specs by their names (sacct; the job-completion log
        where sacct -c cannot tell arrays from their tasks), from one command."""
        if not names:
            return {}
        if self.accounting == "jobcomp":
            try:
                records = self._jobcomp_records([JobQuery("", "", name) for name in names])
            except SiteUnreachable as exc:
                raise SiteUnreachable(f"site {self.site}: {exc.message}") from None
        else:
            result = self._run(slurm.sacct_by_name_argv(names, self.accounting, since))
            if not result.ok:
                raise SiteUnreachable(f"site {self.site}: sacct failed: {_last_line(result)}")
            records = slurm.parse_sacct(result.stdout)
        found: dict[str, str] = {}
        for record in records:
            array_id = record.array_job_id
            if record.name in names and array_id and int(array_id) <= int(found.get(record.name, array_id)):
                found[record.name] = array_id
        return found

    def find_tokens(self, tokens: Sequence[str]) -> dict[str, str]:
        """Slurm ids of the jobs carrying these submission tokens, from one squeue."""
        if not tokens:
            return {}
        result = self._run(slurm.find_by_comment_argv())
        if not result.ok:
            raise SiteUnreachable(f"site {self.site}: squeue failed: {_last_line(result)}")
        return slurm.find_tokens_in_queue(slurm.parse_squeue(result.stdout), tokens)

    def probe(self, partitions: Sequence[str], script: str | None) -> load_probe.ProbeResult:
        import gateway.slurm.probe as load_probe

        result = self._run(
            load_probe.probe_argv(partitions, script is not None),
            stdin=script.encode() if script is not None else None,
        )
        try:
            return load_probe.parse_probe(result.stdout)
        except load_probe.ProbeUnreadable as exc:
            raise SiteUnreachable(f"site {self.site}: {exc}") from None

    def test_only(self, script: str) -> load_probe.StartEstimate:
        import gateway.slurm.probe as load_probe

        program = 'printf "%s\\n" "$(date +%Y-%m-%dT%H:%M:%S)"; ' + load_probe.TEST_ONLY_SHELL
        result = self._run(["bash", "-c", program, "aif-test-only"], stdin=script.encode())
        now_text, _, rest = result.stdout.partition("\n")
        try:
            now = datetime.fromisoformat(now_text.strip())
        except ValueError:
            raise SiteUnreachable(f"site {self.site}: sbatch --test-only answered nothing readable") from None
        return load_probe.parse_test_only_output(rest, now)

    def survey(self, test_scripts: Sequence[str]) -> partition_info.SiteSnapshot:
        """The site's partitions and nodes, and sbatch --test-only of each script: ONE command."""
        from gateway.slurm import partitions as partition_info

        result = self._run(partition_info.check_argv(test_scripts))
        if not result.ok:
            raise SiteUnreachable(f"site {self.site}: asking for its partitions failed: {_last_line(result)}")
        return partition_info.parse_check_output(result.stdout, len(test_scripts))

    def read_file(self, path: str, offset: int = 0) -> bytes:
        if offset:
            result = self._run(["tail", "-c", f"+{offset + 1}", "--", path])
            return result.stdout.encode("utf-8") if result.ok else b""
        try:
            return self.transport.read_file(path)
        except (OSError, SiteUnreachable):
            return b""

    def fetch(self, remote: str, local: Path, progress: Progress | None = None) -> None:
        fetch_path(self.transport, remote, local, progress)

    def prepare(self) -> None:
        connect_soon = getattr(self.transport, "connect_soon", None)
        if connect_soon is not None:  # an SSH login to overlap; a local transport has none
            connect_soon()

    def close(self) -> None:
        self.transport.close()


# -- confirming identity (pure) -----------------------------------------------------------


def _index_records(records: Sequence[slurm.JobRecord]) -> dict[str, list[slurm.JobRecord]]:
    """Records by every id a query may use: the base id (array or job), the raw id, and a
    task's own ``ARRAYID_TASK``."""
    index: dict[str, list[slurm.JobRecord]] = {}
    for record in records:
        keys = {record.array_job_id or record.job_id}
        if record.raw_job_id:
            keys.add(record.raw_job_id)
        if record.array_job_id and not record.is_pending_array_range:
            keys.add(record.job_id)
        for key in keys:
            index.setdefault(key, []).append(record)
    return index


def _candidates(index: dict[str, list[slurm.JobRecord]], query: JobQuery) -> list[slurm.JobRecord]:
    """The records that may be the query's job. For a task of an array of specs: that task's
    own record, or the array's record of pending tasks that holds it; nothing else."""
    task = query.task
    if task is None:
        return _unique(index.get(query.slurm_job_id, ()))
    own = [r for r in index.get(query.slurm_job_id, ()) if r.job_id == query.slurm_job_id]
    if own:
        return _unique(own)
    base = query.slurm_job_id.partition("_")[0]
    return _unique(
        [
            r
            for r in index.get(base, ())
            if r.array_job_id == base and r.is_pending_array_range and r.stands_for_task(task)
        ]
    )


def _as_task(query: JobQuery, records: list[slurm.JobRecord]) -> slurm.JobRecord:
    """The task's record: its own, or (still pending) the array's pending record, seen as the task."""
    own = [r for r in records if r.job_id == query.slurm_job_id]
    if own:
        return own[-1]
    return replace(records[0], job_id=query.slurm_job_id, array_task_id=str(query.task), raw_job_id="")


def confirm_in_queue(records: Sequence[slurm.JobRecord], queries: Sequence[JobQuery]) -> dict[str, Sighting]:
    """Each query's squeue records, kept only when they carry its token (a task: its array's
    token). Linear in records + queries."""
    index = _index_records(records)
    found: dict[str, Sighting] = {}
    for query in queries:
        candidates = _candidates(index, query)
        ours = [r for r in candidates if r.comment == query.comment]
        if ours:
            record = _as_task(query, ours) if query.task is not None else _fold(query.slurm_job_id, ours)
            found[query.token] = Sighting(record, in_queue=True)
        elif candidates:
            found[query.token] = Sighting(
                None,
                f"Slurm job {query.slurm_job_id} in the queue is another job (not this job's token): "
                "the site reused the id",
            )
        else:
            found[query.token] = Sighting(None, f"Slurm job {query.slurm_job_id} is no longer in the queue")
    return found


def confirm_in_accounting(
    records: Sequence[slurm.JobRecord], queries: Sequence[JobQuery], seen: dict[str, Sighting]
) -> dict[str, Sighting]:
    """Each query's finished-job records, kept only when they carry its name (the second proof;
    a task: its own ``ARRAYID_TASK`` record, with its array's name)."""
    index = _index_records(records)
    found: dict[str, Sighting] = {}
    for query in queries:
        before = seen[query.token].problem if query.token in seen else ""
        candidates = _unique(index.get(query.slurm_job_id, ()))
        if query.task is not None:
            candidates = [r for r in candidates if r.job_id == query.slurm_job_id]
        if not query.slurm_name:
            found[query.token] = Sighting(
                None,
                f"{before}; its name carries no aif id (submitted by an older aif), "
                "so Slurm's records of finished jobs cannot confirm which job it was",
            )
            continue
        ours = [r for r in candidates if r.name == query.slurm_name]
        if ours:
            record = ours[-1] if query.task is not None else _fold(query.slurm_job_id, ours)
            found[query.token] = Sighting(record)
        elif candidates:
            found[query.token] = Sighting(
                None, f"{before}; the finished Slurm job {query.slurm_job_id} on record is another job"
            )
        else:
            found[query.token] = Sighting(None, f"{before}; no finished job {query.slurm_job_id} on record")
    return found


def _unique(records: Sequence[slurm.JobRecord]) -> list[slurm.JobRecord]:
    seen: set[int] = set()
    result = []
    for record in records:
        if id(record) not in seen:
            seen.add(id(record))
            result.append(record)
    return result


def _fold(job_id: str, records: list[slurm.JobRecord]) -> slurm.JobRecord:
    return records[0] if len(records) == 1 else fold_array(job_id, records)


def fetch_path(transport: FileTransport, remote: str, local: Path, progress: Progress | None) -> None:
    """Copy a directory tree or a single file back; a missing one is one clear error."""
    try:
        try:
            transport.get_tree(remote, local, progress)
        except NotADirectoryError:
            local.parent.mkdir(parents=True, exist_ok=True)
            transport.get_file(remote, local, progress)
    except FileNotFoundError:
        raise AifError(f"site {transport.site}: {remote} does not exist (did the job write it?)") from None
    except PermissionError:
        raise AifError(f"site {transport.site}: {remote} cannot be read (permission denied)") from None


def fold_array(job_id: str, tasks: Sequence[slurm.JobRecord]) -> slurm.JobRecord:
    """An array's state: running while any task is, else the first failure, else COMPLETED."""
    active = [t for t in tasks if not t.state.terminal]
    if active:
        running = [t for t in active if t.state is JobState.RUNNING]
        chosen = running[0] if running else active[0]
    else:
        failed = [t for t in tasks if t.state is not JobState.COMPLETED]
        chosen = failed[0] if failed else tasks[0]
    done = sum(1 for t in tasks if t.state.terminal and not t.is_pending_array_range)
    reason = chosen.reason or f"{done} tasks ended"
    return replace(chosen, job_id=job_id, reason=reason)


def _last_line(result: CommandResult) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {result.returncode}"


# -- opening a site -------------------------------------------------------------------


def open_backend(
    profile: SiteProfile,
    access: SiteAccess,
    on_command: CommandHook | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    login_in_child: bool = False,
) -> SiteBackend:
    """The backend for a site, as the user's config says to reach it (ssh by default).

    ``timeout`` bounds each query (connecting included); a submission gets longer.
    ``login_in_child``: an SSH site's early login (``prepare``) runs in a forked
    child process (``gateway.transports.mux.forked``), for a short-lived process
    with no other thread, like the CLI's; commands that were not prepared go over
    a direct connection that backend opens on first use (not the process-wide one
    of ``connection_for``).
    """
    if access.transport == "pyslurm":
        from gateway.pyslurm_backend import PyslurmBackend

        return PyslurmBackend(site=profile.name, slurm_conf=access.slurm_conf, on_command=on_command)
    transport: FileTransport
    if access.transport == "local":
        from gateway.transports.local import LocalTransport

        env = {"SLURM_CONF": access.slurm_conf} if access.slurm_conf else None
        transport = LocalTransport(profile.name, env=env, on_command=on_command)
    elif access.share_connection:
        # Through the site's holder process (no paramiko here while it answers).
        from gateway.transports.mux import shared_connection_for

        shared = _plain_target(profile, access, timeout)
        transport = shared_connection_for(shared, persist_s=access.persist_s, on_command=on_command)
    elif login_in_child:
        from gateway.transports.mux.forked import ForkedTransport

        transport = ForkedTransport(_plain_target(profile, access, timeout), on_command=on_command)
    else:
        from gateway.transports.ssh import SshTarget, connection_for

        target = SshTarget(
            site=profile.name,
            host=access.host or profile.host,
            port=access.port or profile.port,
            user=access.user,
            identity_file=Path(access.identity_file).expanduser() if access.identity_file else None,
            known_hosts=Path(access.known_hosts).expanduser() if access.known_hosts else None,
            proxy_jump=access.proxy_jump,
            connect_timeout=min(timeout, 15.0),
        )
        transport = connection_for(target, on_command=on_command)
    return SlurmCliBackend(
        transport=transport,
        accounting=sacct_source(profile),
        timeout=timeout,
        submit_concurrency=profile.slurm.submit_concurrency,
    )


def _plain_target(profile: SiteProfile, access: SiteAccess, timeout: float) -> SharedTarget:
    """The site's SSH target as plain data, for a transport that must not import paramiko."""
    from gateway.transports.mux import SharedTarget

    return SharedTarget(
        site=profile.name,
        host=access.host or profile.host,
        port=access.port or profile.port,
        user=access.user,
        identity_file=str(Path(access.identity_file).expanduser()) if access.identity_file else None,
        known_hosts=str(Path(access.known_hosts).expanduser()) if access.known_hosts else None,
        proxy_jump=access.proxy_jump,
        connect_timeout=min(timeout, 15.0),
    )


def sacct_source(profile: SiteProfile) -> slurm.SacctSource:
    """Where the site keeps finished jobs: slurmdbd (sacct) or the jobcomp file (sacct -c)."""
    return "jobcomp" if profile.slurm.accounting == "jobcomp" else "slurmdbd"


def describe_command(site: str, argv: Sequence[str]) -> str:
    """`+ [SITE] argv` on one line; long or multi-line arguments (the batch program) are abbreviated."""
    shown = []
    for arg in argv:
        if "\n" in arg or len(arg) > 160:
            shown.append(f"<{len(arg.splitlines())}-line program>")
        else:
            shown.append(shlex.quote(arg))
    return f"+ [{site}] " + " ".join(shown)
