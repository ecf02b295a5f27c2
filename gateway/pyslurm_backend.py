"""An optional backend for login nodes: libslurm through pyslurm, no subprocesses.

``pip install 'aif[pyslurm]'`` on a login node whose libslurm matches the
pyslurm release (PyPI has pyslurm 25.11 only, which needs Slurm 25.11).
pyslurm is imported lazily, on first use, so aif never needs it to start.

Only the submit/query/cancel calls go through pyslurm; files (logs,
outputs) are on the login node's own file systems and are read locally.
Tested with pytest-mock against pyslurm's documented API
(``JobSubmitDescription``, ``Jobs.load``, ``Job.cancel``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from gateway import slurm
from gateway.errors import BackendMissing, SiteUnreachable
from gateway.site import fetch_path, records_by_job
from gateway.transports.base import CommandHook, Progress


def import_pyslurm() -> ModuleType:
    try:
        import pyslurm
    except ImportError as exc:
        raise BackendMissing(
            "the pyslurm backend needs pyslurm: pip install 'aif[pyslurm]' on a login node "
            f"whose Slurm matches the pyslurm release ({exc})"
        ) from None
    return pyslurm  # type: ignore[no-any-return]


@dataclass
class PyslurmBackend:
    site: str
    slurm_conf: str | None = None
    on_command: CommandHook | None = None
    _module: ModuleType | None = field(default=None, repr=False)

    @property
    def pyslurm(self) -> ModuleType:
        if self._module is None:
            if self.slurm_conf:
                # libslurm reads SLURM_CONF when it first loads its configuration.
                os.environ["SLURM_CONF"] = self.slurm_conf
            self._module = import_pyslurm()
        return self._module

    def _note(self, *argv: str) -> None:
        if self.on_command is not None:
            self.on_command(self.site, ["pyslurm", *argv])

    def submit(self, items: Sequence[slurm.SubmissionItem]) -> list[slurm.SubmissionOutcome]:
        outcomes = []
        for index, item in enumerate(items):
            self._note("JobSubmitDescription.submit", item.workdir)
            try:
                if item.workdir:
                    Path(item.workdir).mkdir(parents=True, exist_ok=True)
                desc = self.pyslurm.JobSubmitDescription(
                    script=item.script, working_directory=item.workdir or None
                )
                dependency = _dependency_of(item.extra_args)
                if dependency:
                    desc.dependencies = dependency
                desc.load_sbatch_options()
                job_id = desc.submit()
            except BackendMissing:
                raise
            except Exception as exc:  # pyslurm raises RPCError (and ValueError) with Slurm's message
                outcomes.append(slurm.SubmissionOutcome(index=index, ok=False, job_id=None, error=str(exc)))
            else:
                outcomes.append(slurm.SubmissionOutcome(index=index, ok=True, job_id=str(job_id), error=""))
        return outcomes

    def _all_jobs(self) -> list[Any]:
        self._note("Jobs.load")
        try:
            jobs = self.pyslurm.Jobs.load()
        except BackendMissing:
            raise
        except Exception as exc:
            raise SiteUnreachable(f"site {self.site}: pyslurm could not load jobs: {exc}") from None
        return list(jobs.values())

    def jobs(self, slurm_ids: Sequence[str]) -> dict[str, slurm.JobRecord]:
        return records_by_job([_record_of(job) for job in self._all_jobs()], slurm_ids)

    def cancel(self, slurm_ids: Sequence[str]) -> None:
        for job_id in slurm_ids:
            self._note("Job.cancel", job_id)
            try:
                self.pyslurm.Job(int(job_id)).cancel()
            except BackendMissing:
                raise
            except Exception as exc:
                raise SiteUnreachable(f"site {self.site}: cancelling job {job_id} failed: {exc}") from None

    def find_tokens(self, tokens: Sequence[str]) -> dict[str, str]:
        wanted = {f"aif:{t}": t for t in tokens}
        found = {}
        for job in self._all_jobs():
            token = wanted.get(str(getattr(job, "comment", "") or ""))
            if token is not None:
                base = getattr(job, "array_id", None)
                found[token] = str(base if base else job.id)
        return found

    def read_file(self, path: str, offset: int = 0) -> bytes:
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                return handle.read()
        except OSError:
            return b""

    def fetch(self, remote: str, local: Path, progress: Progress | None = None) -> None:
        from gateway.transports.local import LocalTransport

        fetch_path(LocalTransport(self.site), remote, local, progress)

    def close(self) -> None:
        return None


def _dependency_of(extra_args: Sequence[str]) -> str | None:
    for arg in extra_args:
        if arg.startswith("--dependency="):
            return arg.split("=", 1)[1]
    return None


def _record_of(job: Any) -> slurm.JobRecord:
    array_id = getattr(job, "array_id", None)
    task_id = getattr(job, "array_task_id", None)
    job_id = f"{array_id}_{task_id}" if array_id and task_id is not None else str(job.id)
    raw_state = str(getattr(job, "state", "UNKNOWN") or "UNKNOWN")
    exit_code = getattr(job, "exit_code", None)
    return slurm.JobRecord(
        job_id=job_id,
        array_job_id=str(array_id) if array_id else None,
        name=str(getattr(job, "name", "") or ""),
        state=slurm.normalize_state(raw_state),
        raw_state=raw_state,
        reason=str(getattr(job, "state_reason", "") or ""),
        comment=str(getattr(job, "comment", "") or ""),
        exit_code=exit_code if isinstance(exit_code, int) else None,
        partition=str(getattr(job, "partition", "") or ""),
        nodelist=str(getattr(job, "nodes", "") or ""),
    )
