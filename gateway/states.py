"""The one job-state vocabulary: the dialect, the ledger, the lifecycle and the CLI all use it.

A leaf module (it imports nothing of aif). ``JobState`` is a ``str`` enum, so a
state is stored, printed and written to JSON as its plain name (``"PENDING"``).
"""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    """Where a job is, as far as aif can tell.

    Slurm's states (normalised by the dialect; ``JobRecord.raw_state`` keeps
    Slurm's own word) and the gateway's own states for jobs that never
    reached Slurm, or whose fate aif cannot confirm yet.
    """

    # Slurm's
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    PREEMPTED = "PREEMPTED"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    # aif cannot tell (reason says why); never terminal: it keeps looking
    UNKNOWN = "UNKNOWN"
    # the gateway's own
    SUBMITTING = "SUBMITTING"  # recorded, maybe sent: its token resolves it
    REJECTED = "REJECTED"  # the scheduler refused it: not submitted
    UNREACHABLE = "UNREACHABLE"  # the site was not reached: not submitted
    INVALID = "INVALID"  # the spec failed validation: not submitted
    NOT_SENT = "NOT_SENT"  # interrupted or superseded before it was sent: not submitted

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def terminal(self) -> bool:
        """True for states a job never leaves for a non-terminal one.

        UNKNOWN and SUBMITTING are not terminal: aif keeps looking.
        """
        return self in TERMINAL_STATES

    @property
    def from_slurm(self) -> bool:
        """True for the states Slurm itself reports."""
        return self in SLURM_STATES


SLURM_TERMINAL_STATES = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.PREEMPTED,
        JobState.NODE_FAIL,
        JobState.OUT_OF_MEMORY,
    }
)
SLURM_STATES = SLURM_TERMINAL_STATES | {JobState.PENDING, JobState.RUNNING, JobState.UNKNOWN}
# Nothing was ever submitted for these: they are final, whatever comes later.
NOT_SUBMITTED_STATES = frozenset(
    {JobState.REJECTED, JobState.UNREACHABLE, JobState.INVALID, JobState.NOT_SENT}
)
TERMINAL_STATES = SLURM_TERMINAL_STATES | NOT_SUBMITTED_STATES
ACTIVE_STATES = frozenset(JobState) - TERMINAL_STATES


def is_terminal(state: str) -> bool:
    """True for states a job never leaves for a non-terminal one (any spelling of the name)."""
    return state in TERMINAL_STATES
