"""The Slurm dialect: the argv lists aif runs at a site, and parsers for what comes back.

Pure: no subprocess, no I/O at a site. Transports run the argv lists (quoting
them where a shell stands in between) and hand back stdout/stderr; this package
reads them. The bash programs aif runs at a site are files in the package
(``submit.sh``, ``scancel_by_name.sh``, ``probe.sh``), read once at import.

Everything here was checked against real Slurm 22.05; the recordings the unit
tests replay are in ``tests/data/slurm/`` (its README says how each was made).

- ``jobs``: job states (one map onto ``gateway.states.JobState``), job ids,
  exit codes and ``JobRecord``;
- ``queue``: squeue, sacct and scancel, and finding a job by its token or name;
- ``load``: partition load (sinfo) and queue depth;
- ``probe``: a site's load in one command, with Slurm's estimated start for a job
  (the federation's probe);
- ``partitions``: what a site's partitions really are (sinfo per node, scontrol,
  sbatch --test-only), compared with a profile (``aif profile check``);
- ``submission``: the batched submission program, its bundle and its answers.

Every public name of ``jobs``, ``queue``, ``load`` and ``submission`` is
re-exported here (``from gateway import slurm``); ``probe`` and ``partitions``
are imported as modules.
"""

from __future__ import annotations

from gateway.slurm.jobs import (
    JobRecord,
    SlurmOutputError,
    count_array_tasks,
    decode_exit_code_pair,
    decode_wait_status,
    expand_array_tasks,
    is_controller_unreachable,
    is_job_id,
    normalize_state,
    select_jobs,
)
from gateway.slurm.load import (
    SINFO_FIELDS,
    PartitionLoad,
    QueueDepth,
    gres_count,
    node_state_usable,
    parse_queue_depth,
    parse_sinfo,
    parse_slurm_duration,
    queue_depth_argv,
    sinfo_argv,
)
from gateway.slurm.queue import (
    COMMENT_PREFIX,
    FIELD_SEPARATOR,
    RECORD_END,
    SACCT_FIELDS,
    SQUEUE_FIELDS,
    SacctSource,
    find_all_by_comment,
    find_by_comment_argv,
    find_tokens_in_queue,
    parse_find_by_comment,
    parse_sacct,
    parse_scancel_errors,
    parse_squeue,
    sacct_argv,
    sacct_by_name_argv,
    scancel_by_name_argv,
    squeue_argv,
    squeue_format,
    squeue_found_no_jobs,
    submission_comment,
)
from gateway.slurm.submission import (
    CLAIMED_RC,
    RECORD_FAILED_RC,
    SUBMISSION_SETUP_FAILED,
    TOO_LARGE_RC,
    ArrayMember,
    ArraySubmission,
    Outcome,
    Submission,
    SubmissionItem,
    SubmissionOutcome,
    answer_count,
    build_submission_bundle,
    classify_sbatch,
    max_array_size_of,
    parse_submission_output,
    submission_argv,
    submission_program,
)
from gateway.states import JobState

__all__ = [
    "CLAIMED_RC",
    "COMMENT_PREFIX",
    "FIELD_SEPARATOR",
    "RECORD_END",
    "RECORD_FAILED_RC",
    "SACCT_FIELDS",
    "SINFO_FIELDS",
    "SQUEUE_FIELDS",
    "SUBMISSION_SETUP_FAILED",
    "TOO_LARGE_RC",
    "ArrayMember",
    "ArraySubmission",
    "JobRecord",
    "JobState",
    "Outcome",
    "PartitionLoad",
    "QueueDepth",
    "SacctSource",
    "SlurmOutputError",
    "Submission",
    "SubmissionItem",
    "SubmissionOutcome",
    "answer_count",
    "build_submission_bundle",
    "classify_sbatch",
    "count_array_tasks",
    "decode_exit_code_pair",
    "decode_wait_status",
    "expand_array_tasks",
    "find_all_by_comment",
    "find_by_comment_argv",
    "find_tokens_in_queue",
    "gres_count",
    "is_controller_unreachable",
    "is_job_id",
    "max_array_size_of",
    "node_state_usable",
    "normalize_state",
    "parse_find_by_comment",
    "parse_queue_depth",
    "parse_sacct",
    "parse_scancel_errors",
    "parse_sinfo",
    "parse_slurm_duration",
    "parse_squeue",
    "parse_submission_output",
    "queue_depth_argv",
    "sacct_argv",
    "sacct_by_name_argv",
    "scancel_by_name_argv",
    "select_jobs",
    "sinfo_argv",
    "squeue_argv",
    "squeue_format",
    "squeue_found_no_jobs",
    "submission_argv",
    "submission_comment",
    "submission_program",
]
