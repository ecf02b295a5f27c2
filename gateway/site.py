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
from pathlib import Path
from typing import Protocol

from gateway import slurm
from gateway.config import SiteAccess
from gateway.errors import AifError, SiteUnreachable
from gateway.profiles import SiteProfile
from gateway.transports.base import DEFAULT_TIMEOUT, CommandHook, CommandResult, Progress, Transport

SUBMIT_TIMEOUT = 300.0


class FileTransport(Transport, Protocol):
    """A transport that can also read and copy files back (SFTP or the local disk)."""

    def read_file(self, remote_path: str) -> bytes: ...

    def get_tree(self, remote_dir: str, local_dir: Path, progress: Progress | None = None) -> object: ...

    def get_file(self, remote_path: str, local_path: Path, progress: Progress | None = None) -> object: ...


class SiteBackend(Protocol):
    @property
    def site(self) -> str: ...

    def submit(self, items: Sequence[slurm.SubmissionItem]) -> list[slurm.SubmissionOutcome]: ...

    def jobs(self, slurm_ids: Sequence[str]) -> dict[str, slurm.JobRecord]: ...

    def cancel(self, slurm_ids: Sequence[str]) -> None: ...

    def find_tokens(self, tokens: Sequence[str]) -> dict[str, str]: ...

    def read_file(self, path: str, offset: int = 0) -> bytes: ...

    def fetch(self, remote: str, local: Path, progress: Progress | None = None) -> None: ...

    def close(self) -> None: ...


@dataclass
class SlurmCliBackend:
    """Slurm's own commands, run through any transport."""

    transport: FileTransport
    accounting: slurm.SacctSource  # where finished jobs are looked up

    @property
    def site(self) -> str:
        return self.transport.site

    def _run(
        self, argv: Sequence[str], stdin: bytes | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> CommandResult:
        return self.transport.run(argv, stdin=stdin, timeout=timeout)

    def submit(self, items: Sequence[slurm.SubmissionItem]) -> list[slurm.SubmissionOutcome]:
        """All items in ONE command: a tar of scripts on stdin, one sbatch per script at the site."""
        if not items:
            return []
        result = self._run(
            ["bash", "-c", slurm.submission_program(), "aif-submit"],
            stdin=slurm.build_submission_bundle(items),
            timeout=SUBMIT_TIMEOUT,
        )
        outcomes = slurm.parse_submission_output(result.stdout, len(items))
        if not result.ok and not any(o.ok for o in outcomes):
            # The program itself failed (no bash, no mktemp, no tar): nothing was submitted.
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise SiteUnreachable(
                f"site {self.site}: the submission program failed (exit {result.returncode}): "
                f"{detail[-1] if detail else 'no output'}"
            )
        return outcomes

    def jobs(self, slurm_ids: Sequence[str]) -> dict[str, slurm.JobRecord]:
        """The state of every job asked for: one squeue, plus one sacct for those that left the queue."""
        if not slurm_ids:
            return {}
        result = self._run(slurm.squeue_argv())
        if not result.ok:
            raise SiteUnreachable(f"site {self.site}: squeue failed: {_last_line(result)}")
        found = records_by_job(slurm.parse_squeue(result.stdout), slurm_ids)
        missing = [job_id for job_id in slurm_ids if job_id not in found]
        if missing:
            result = self._run(slurm.sacct_argv(missing, self.accounting))
            if result.ok:
                found.update(records_by_job(slurm.parse_sacct(result.stdout), missing))
        return found

    def cancel(self, slurm_ids: Sequence[str]) -> None:
        if not slurm_ids:
            return
        result = self._run(slurm.scancel_argv(slurm_ids))
        if not result.ok:
            raise SiteUnreachable(f"site {self.site}: scancel failed: {_last_line(result)}")

    def find_tokens(self, tokens: Sequence[str]) -> dict[str, str]:
        """Slurm ids of the jobs carrying these submission tokens, from one squeue."""
        if not tokens:
            return {}
        result = self._run(slurm.find_by_comment_argv())
        if not result.ok:
            raise SiteUnreachable(f"site {self.site}: squeue failed: {_last_line(result)}")
        found = {}
        for token in tokens:
            job_id = slurm.parse_find_by_comment(result.stdout, token)
            if job_id is not None:
                found[token] = job_id
        return found

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

    def close(self) -> None:
        self.transport.close()


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


def records_by_job(
    records: Sequence[slurm.JobRecord], slurm_ids: Sequence[str]
) -> dict[str, slurm.JobRecord]:
    """One record per id asked for; an array's tasks are folded into one record for the array."""
    found: dict[str, slurm.JobRecord] = {}
    for job_id in slurm_ids:
        matching = slurm.select_jobs(records, [job_id])
        if matching:
            found[job_id] = matching[0] if len(matching) == 1 else fold_array(job_id, matching)
    return found


def fold_array(job_id: str, tasks: Sequence[slurm.JobRecord]) -> slurm.JobRecord:
    """An array's state: running while any task is, else the first failure, else COMPLETED."""
    active = [t for t in tasks if not t.state.terminal]
    if active:
        running = [t for t in active if t.state is slurm.JobState.RUNNING]
        chosen = running[0] if running else active[0]
    else:
        failed = [t for t in tasks if t.state is not slurm.JobState.COMPLETED]
        chosen = failed[0] if failed else tasks[0]
    done = sum(1 for t in tasks if t.state.terminal and not t.is_pending_array_range)
    reason = chosen.reason or f"{done} tasks ended"
    return replace(chosen, job_id=job_id, reason=reason)


def _last_line(result: CommandResult) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {result.returncode}"


# -- opening a site -------------------------------------------------------------------


def open_backend(
    profile: SiteProfile, access: SiteAccess, on_command: CommandHook | None = None
) -> SiteBackend:
    """The backend for a site, as the user's config says to reach it (ssh by default)."""
    if access.transport == "pyslurm":
        from gateway.pyslurm_backend import PyslurmBackend

        return PyslurmBackend(site=profile.name, slurm_conf=access.slurm_conf, on_command=on_command)
    if access.transport == "local":
        from gateway.transports.local import LocalTransport

        env = {"SLURM_CONF": access.slurm_conf} if access.slurm_conf else None
        local = LocalTransport(profile.name, env=env, on_command=on_command)
        return SlurmCliBackend(transport=local, accounting=sacct_source(profile))
    from gateway.transports.ssh import SshTarget, connection_for

    target = SshTarget(
        site=profile.name,
        host=access.host or profile.host,
        port=access.port or profile.port,
        user=access.user,
        identity_file=Path(access.identity_file).expanduser() if access.identity_file else None,
        known_hosts=Path(access.known_hosts).expanduser() if access.known_hosts else None,
        proxy_jump=access.proxy_jump,
    )
    return SlurmCliBackend(
        transport=connection_for(target, on_command=on_command), accounting=sacct_source(profile)
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
