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

import gateway.slurm.probe as load_probe
from gateway import journal, slurm
from gateway.errors import BackendMissing, SiteUnreachable
from gateway.site import JobQuery, Sighting, SlurmCliBackend, confirm_in_queue, fetch_path
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

    def submit(
        self, items: Sequence[slurm.Submission], journal_dir: str = ""
    ) -> list[slurm.SubmissionOutcome]:
        """Each item through libslurm, with the same site record the submission program keeps.

        Specs are never coalesced into arrays at a pyslurm site (``gateway.submission``).
        """
        if any(isinstance(item, slurm.ArraySubmission) for item in items):
            raise ValueError("the pyslurm backend submits specs one by one, not as arrays")
        outcomes = []
        if journal_dir:
            Path(journal_dir).mkdir(parents=True, exist_ok=True)
        for index, item in enumerate(items):
            assert isinstance(item, slurm.SubmissionItem)
            self._note("JobSubmitDescription.submit", item.workdir)
            record = Path(journal_dir) / item.claim if item.claim else None
            if record is not None:
                try:
                    _create_exclusive(record, f"intent\t{item.token}\t{item.aif_id}\n")
                except FileExistsError:
                    held = record.read_text(errors="replace").split("\n", 1)[0]
                    outcomes.append(slurm.classify_sbatch(index, slurm.CLAIMED_RC, held))
                    continue
                except OSError as exc:
                    outcomes.append(
                        slurm.classify_sbatch(index, slurm.RECORD_FAILED_RC, f"cannot write {record}: {exc}")
                    )
                    continue
            outcome = self._submit_one(index, item)
            if record is not None:
                answer = outcome.job_id if outcome.ok else outcome.error.replace("\n", " / ")
                with open(record, "a", encoding="utf-8") as handle:
                    handle.write(f"answer\t{outcome.returncode or 0}\t{answer}\n")
            outcomes.append(outcome)
        return outcomes

    def _submit_one(self, index: int, item: slurm.SubmissionItem) -> slurm.SubmissionOutcome:
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
            return slurm.classify_sbatch(index, 1, str(exc).replace("\n", " / "))
        return slurm.classify_sbatch(index, 0, str(job_id))

    def read_record(
        self, directories: Sequence[str], fences: Sequence[journal.Fence] = ()
    ) -> journal.RecordRead:
        """The site record on the login node's own file system, fencing first."""
        lines = []
        for fence in fences:
            Path(fence.directory).mkdir(parents=True, exist_ok=True)
            try:
                _create_exclusive(Path(fence.directory) / fence.claim, f"fence\t{fence.token}\n")
            except FileExistsError:
                continue
            lines.append(f"fenced\t{fence.directory}\t{fence.claim}")
        for index, directory in enumerate(directories):
            folder = Path(directory)
            for path in sorted(folder.iterdir()) if folder.is_dir() else []:
                for line in path.read_text(errors="replace").splitlines():
                    lines.append(f"line\t{index}\t{path.name}\t{line}")
        lines.append("end")
        return journal.parse_record("\n".join(lines) + "\n", len(directories))

    def _all_jobs(self) -> list[Any]:
        self._note("Jobs.load")
        try:
            jobs = self.pyslurm.Jobs.load()
        except BackendMissing:
            raise
        except Exception as exc:
            raise SiteUnreachable(f"site {self.site}: pyslurm could not load jobs: {exc}") from None
        return list(jobs.values())

    def jobs(self, queries: Sequence[JobQuery]) -> dict[str, Sighting]:
        """Confirmed by token among the jobs Slurm still holds; libslurm has no finished-job records here."""
        return confirm_in_queue([_record_of(job) for job in self._all_jobs()], queries)

    def cancel(self, targets: Sequence[tuple[str, str]]) -> None:
        """Cancel each ``(Slurm id, name)`` after checking the id still names that job."""
        for job_id, name in targets:
            self._note("Job.cancel", job_id)
            try:
                job = self.pyslurm.Job.load(int(job_id))
                if name and str(getattr(job, "name", "") or "") != name:
                    continue  # the id names another job now: never signal it
                job.cancel()
            except BackendMissing:
                raise
            except Exception as exc:
                raise SiteUnreachable(f"site {self.site}: cancelling job {job_id} failed: {exc}") from None

    def _local(self) -> SlurmCliBackend:
        """Slurm's own commands on this login node, for what libslurm here does not offer."""
        from gateway.transports.local import LocalTransport

        env = {"SLURM_CONF": self.slurm_conf} if self.slurm_conf else None
        return SlurmCliBackend(transport=LocalTransport(self.site, env=env), accounting="jobcomp")

    def probe(self, partitions: Sequence[str], script: str | None) -> load_probe.ProbeResult:
        return self._local().probe(partitions, script)

    def test_only(self, script: str) -> load_probe.StartEstimate:
        return self._local().test_only(script)

    def find_names(self, names: Sequence[str], since: str) -> dict[str, str]:
        """libslurm here holds no finished-job records: nothing can be found by name."""
        return {}

    def find_arrays(self, names: Sequence[str], since: str) -> dict[str, str]:
        """No arrays of specs are sent through pyslurm, and libslurm here keeps no finished jobs."""
        return {}

    def find_tokens(self, tokens: Sequence[str]) -> dict[str, str]:
        return slurm.find_tokens_in_queue([_record_of(job) for job in self._all_jobs()], tokens)

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

    def prepare(self) -> None:
        return None  # the login node's own Slurm: nothing to reach

    def close(self) -> None:
        return None


def _create_exclusive(path: Path, text: str) -> None:
    """Create ``path`` with ``text`` only if it does not exist (O_EXCL), private to the user."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


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
        raw_job_id=str(job.id),
    )
