"""The Slurm dialect: the argv lists aif runs at a site, and parsers for what comes back.

Pure: no I/O, no subprocess. Transports run the argv lists (quoting them where a
shell stands in between) and hand back stdout/stderr; this module reads them.

Everything here was checked against real Slurm 22.05; the recordings the unit
tests replay are in ``tests/data/slurm/`` (its README says how each was made).

Field separators. Job names, comments and even reasons are free text: Slurm
passes ``|``, tabs, newlines and control bytes through unchanged (a name with a
newline was recorded). So squeue output uses ASCII unit separator (0x1F) between
fields and ASCII record separator (0x1E) at the end of every record, and puts
the free-text fields last with the name at the very end, split with maxsplit:
a stray separator or newline in a name cannot shift the fields of any record.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

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
    parse_queue_depth,
    parse_sinfo,
    parse_slurm_duration,
    queue_depth_argv,
    sinfo_argv,
)
from gateway.slurm.queue import (
    _TOKEN_RE,
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
    "JobRecord",
    "JobState",
    "Outcome",
    "PartitionLoad",
    "QueueDepth",
    "SacctSource",
    "SlurmOutputError",
    "SubmissionItem",
    "SubmissionOutcome",
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


# ---------------------------------------------------------------------------
# Batched submission: one exec, a tar stream of scripts, one line per item
# ---------------------------------------------------------------------------

SUBMISSION_SETUP_FAILED = 97
"""Exit status of the submission program when it submitted nothing at all
(mktemp or tar failed); the reason is on its stderr."""

# Also Slurm's default job name when the script sets none; the program names it too.
_SCRIPT_FILE = "aif-job.sh"
_MAX_ITEMS = 1_000_000  # six-digit directory names

# Runs as: bash -c PROGRAM aif-submit  (stdin: the tar from build_submission_bundle).
# Every value (workdir, sbatch arguments, the record's paths) is read from files as
# data: nothing an item carries is ever part of this text, so no value can run anything.
# Written for bash >= 3.2 (no mapfile -d, which needs 4.4).
_SUBMISSION_PROGRAM = r"""set -u
# noclobber: `>` creates a claim only if it does not exist yet (O_EXCL), so two
# submissions can never both claim one item of the site's record.
set -C
# No umask change: sbatch hands the current umask to the job (SLURM_UMASK),
# and mkdir -p below creates the user's directories. mktemp -d is 0700 anyway.
workspace=$(mktemp -d "${TMPDIR:-/tmp}/aif-submit.XXXXXXXXXX") || {
    echo "aif-submit: cannot create a temporary directory" >&2
    exit 97
}
# Always remove the scripts, also when the connection drops.
trap 'rm -rf -- "$workspace"' EXIT
# bash runs these only once the running command (sbatch) returns: they only note
# the signal, so the answer of an sbatch that ran is still written to the record.
stop=
trap 'stop=129' HUP
trap 'stop=130' INT
trap 'stop=141' PIPE
trap 'stop=143' TERM
if ! tar -x -f - -C "$workspace" --no-same-owner 2>|"$workspace/tar-errors"; then
    echo "aif-submit: cannot unpack the submission bundle: $(cat -- "$workspace/tar-errors")" >&2
    exit 97
fi
one_line() {
    message=${1//$'\r'/}
    message=${message//$'\n'/ / }
    message=${message//$'\t'/ }
}
journal=
[ -f "$workspace/journal" ] && IFS= read -r -d '' journal <"$workspace/journal"
# Every workdir (and the record's directory) first, in ONE mkdir: a fork per job
# would cost more than its sbatch.
workdirs=()
count=0
while :; do
    printf -v item '%s/%06d' "$workspace" "$count"
    [ -d "$item" ] || break
    workdir=
    IFS= read -r -d '' workdir <"$item/workdir"
    workdirs[count]=$workdir
    count=$((count + 1))
done
wanted=()
[ -n "$journal" ] && [ ! -d "$journal" ] && wanted+=("$journal")
for workdir in ${workdirs[@]+"${workdirs[@]}"}; do
    [ -n "$workdir" ] && [ ! -d "$workdir" ] && wanted+=("$workdir")
done
if [ "${#wanted[@]}" -gt 0 ]; then
    mkdir -p -- "${wanted[@]}" 2>|"$workspace/mkdir-errors" </dev/null || true
fi
index=0
while [ "$index" -lt "$count" ] && [ -z "$stop" ]; do
    printf -v item '%s/%06d' "$workspace" "$index"
    index=$((index + 1))
    workdir=${workdirs[index - 1]}
    sbatch_args=()
    while IFS= read -r -d '' arg; do
        sbatch_args+=("$arg")
    done <"$item/args"
    record=
    if [ -f "$item/claim" ]; then
        { IFS= read -r -d '' claim; IFS= read -r -d '' token; IFS= read -r -d '' aif_id; } <"$item/claim"
        record=$journal/$claim
        # The intent, BEFORE sbatch: an item with no intent was provably never sent.
        if ! printf 'intent\t%s\t%s\n' "$token" "$aif_id" 2>/dev/null >"$record"; then
            held=
            if [ -f "$record" ]; then
                IFS= read -r held <"$record" || true
                one_line "$held"
                printf '%d\t%d\t%s\n' "$((index - 1))" -2 "$message"
            else
                printf '%d\t%d\t%s\n' "$((index - 1))" -3 \
                    "cannot write the site record $record: not submitted"
            fi
            continue
        fi
    fi
    # Not cd-ing anywhere: sbatch's working directory becomes the job's
    # submit directory, and the temporary directory is about to vanish.
    # Files instead of $(...) for the answers: one fork less per item.
    rc=0
    if [ -n "$workdir" ] && [ ! -d "$workdir" ]; then
        # The batch mkdir failed for this one: say why, for this item only.
        mkdir -p -- "$workdir" 2>|"$workspace/errors" </dev/null || rc=$?
    fi
    if [ "$rc" -eq 0 ]; then
        sbatch --parsable ${sbatch_args[@]+"${sbatch_args[@]}"} "$item/aif-job.sh" \
            >|"$workspace/output" 2>|"$workspace/errors" </dev/null || rc=$?
    fi
    output=
    if [ "$rc" -eq 0 ]; then
        IFS= read -r output <"$workspace/output"
    else
        output=$(cat -- "$workspace/errors")
        [ -n "$output" ] || output="exited with status $rc"
    fi
    one_line "$output"
    # The answer goes to the site's record first, then to us.
    [ -z "$record" ] || printf 'answer\t%d\t%s\n' "$rc" "$message" >>"$record"
    printf '%d\t%d\t%s\n' "$((index - 1))" "$rc" "$message"
done
[ -z "$stop" ] || exit "$stop"
exit 0
"""

# Answer codes the program uses besides sbatch's own exit status.
CLAIMED_RC = -2  # the item is already claimed in the site's record: not sent by us
RECORD_FAILED_RC = -3  # the site's record could not be written: not sent


@dataclass(frozen=True)
class SubmissionItem:
    """One job script to submit, with what sbatch needs around it.

    ``workdir``: absolute directory to ``mkdir -p`` before sbatch ('' for none).
    ``extra_args``: sbatch options in ``--name=value`` form, e.g.
    ``("--dependency=afterok:12",)``; each must start with ``-`` (a bare word
    would become sbatch's script argument).
    ``claim``: the item's file in the site's record (``ITEM.GEN``, see
    ``gateway.journal``), with the job's ``token`` and ``aif_id``; '' to
    submit without a record.
    """

    script: str
    workdir: str
    extra_args: tuple[str, ...] = ()
    claim: str = ""
    token: str = ""
    aif_id: str = ""


class Outcome(str, Enum):
    """What became of one submitted item, as the dialect classifies it."""

    ACCEPTED = "accepted"  # sbatch gave a job id
    REFUSED = "refused"  # the scheduler refused it (Slurm's words in ``error``): not submitted
    SITE_DOWN = "site down"  # the controller could not be reached: not submitted, retryable
    UNKNOWN = "unknown"  # maybe submitted: resolve by token before anything else
    CLAIMED = "claimed"  # another submission with the same key holds this item: not sent by us


@dataclass(frozen=True)
class SubmissionOutcome:
    """What became of one SubmissionItem (``kind`` says which case; see Outcome).

    ``job_id`` is set for ACCEPTED; ``error`` is sbatch's (or the program's)
    words otherwise; for CLAIMED it is the claim's first line. ``cluster``
    is set for ``12;cluster``.
    """

    index: int
    kind: Outcome
    job_id: str | None
    error: str
    cluster: str | None = None
    returncode: int | None = None

    def __post_init__(self) -> None:
        if (self.kind is Outcome.ACCEPTED) != (self.job_id is not None):
            raise ValueError("an accepted item, and only one, has a job id")

    @property
    def ok(self) -> bool:
        return self.kind is Outcome.ACCEPTED

    @property
    def unknown(self) -> bool:
        """True when the item may have been submitted although no job id came back."""
        return self.kind is Outcome.UNKNOWN


def submission_program() -> str:
    """The bash program run as ``bash -c PROGRAM aif-submit`` with the bundle on stdin.

    It unpacks the tar into ``mktemp -d`` (removed on exit), then per item in
    order: claims the item in the site's record (an ``intent`` line, created
    exclusively: an item someone already claimed is answered ``CLAIMED_RC``
    and not sent), ``mkdir -p -- workdir`` if set, ``sbatch --parsable [extra
    args] script``, appends the ``answer`` to the record, and prints exactly
    one line ``index<TAB>rc<TAB>job-id-or-error`` (error text on one line).
    A failing item does not stop the batch; the program exits 0 after the
    last item, or SUBMISSION_SETUP_FAILED before the first. A signal (the
    connection dropped: SIGHUP, SIGPIPE, SIGTERM) is acted on only once the
    running sbatch returned and its answer is in the record; then it exits
    129/141/143 without starting another item, still removing the temp dir.
    Items without an answer line are "unknown" here; the site's record
    tells which of them were sent (``gateway.journal``). Over SSH the
    program is one argv element of about 2 KiB (the 128 KiB argv limit only
    bites if scripts were put on the command line). It spans several lines,
    which a csh-family login shell would not accept inside quotes.

    Measured locally on the record cluster: 200 items in 1.05 s (plain
    ``sbatch`` loop: 0.93 s), 1.3 s when each item also has a workdir.
    """
    return _SUBMISSION_PROGRAM


def submission_argv() -> list[str]:
    """argv for a transport: run ``submission_program()`` with bash."""
    return ["bash", "-c", _SUBMISSION_PROGRAM, "aif-submit"]


def build_submission_bundle(items: Sequence[SubmissionItem], journal_dir: str = "") -> bytes:
    """An in-memory, byte-for-byte deterministic tar of the items.

    ``journal`` (the site record's directory for this submission,
    NUL-terminated) when given; per item ``NNNNNN/`` (zero-padded index):
    ``aif-job.sh`` (the script), ``workdir`` (the directory, NUL-terminated),
    ``args`` (the extra sbatch arguments, each NUL-terminated) and, for an
    item with a claim, ``claim`` (claim, token and aif id, each NUL-terminated).
    """
    if len(items) >= _MAX_ITEMS:
        raise ValueError(f"at most {_MAX_ITEMS - 1} items per batch")
    if any(item.claim for item in items) and not journal_dir.startswith("/"):
        raise ValueError(f"items with claims need the record's absolute directory, not {journal_dir!r}")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as bundle:
        if journal_dir:
            _add_to_tar(bundle, "journal", journal_dir.encode() + b"\0")
        for index, item in enumerate(items):
            _check_item(index, item)
            directory = f"{index:06d}"
            _add_to_tar(bundle, directory, None)
            _add_to_tar(bundle, f"{directory}/{_SCRIPT_FILE}", item.script.encode())
            _add_to_tar(bundle, f"{directory}/workdir", item.workdir.encode() + b"\0")
            args = b"".join(arg.encode() + b"\0" for arg in item.extra_args)
            _add_to_tar(bundle, f"{directory}/args", args)
            if item.claim:
                claim = b"".join(v.encode() + b"\0" for v in (item.claim, item.token, item.aif_id))
                _add_to_tar(bundle, f"{directory}/claim", claim)
    return buffer.getvalue()


def _check_item(index: int, item: SubmissionItem) -> None:
    if not item.script.strip():
        raise ValueError(f"item {index}: the script is empty")
    if "\0" in item.script:
        raise ValueError(f"item {index}: the script contains a NUL byte")
    if item.workdir and (not item.workdir.startswith("/") or "\0" in item.workdir):
        raise ValueError(f"item {index}: workdir must be an absolute path: {item.workdir!r}")
    if item.claim and not (_CLAIM_RE.fullmatch(item.claim) and _TOKEN_RE.match(item.token) and item.aif_id):
        raise ValueError(f"item {index}: not a claim: {item.claim!r} for token {item.token!r}")
    if "\0" in item.aif_id or "\t" in item.aif_id or "\n" in item.aif_id:
        raise ValueError(f"item {index}: not an aif id: {item.aif_id!r}")
    for arg in item.extra_args:
        # NUL separates the arguments in the bundle; a word not starting with
        # "-" would be taken by sbatch as the script to submit.
        if not arg.startswith("-") or "\0" in arg:
            raise ValueError(f"item {index}: not an sbatch option: {arg!r}")


def _add_to_tar(bundle: tarfile.TarFile, name: str, data: bytes | None) -> None:
    # Fixed metadata (mtime 0, root-less owner) keeps the bundle deterministic.
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if data is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o700
        bundle.addfile(info)
    else:
        info.mode = 0o600
        info.size = len(data)
        bundle.addfile(info, io.BytesIO(data))


_CLAIM_RE = re.compile(r"[0-9a-f]{8,64}-[0-9]+\.[0-9]+")
_OUTCOME_LINE_RE = re.compile(r"^([0-9]+)\t(-?[0-9]+)\t(.*)$")
_PARSABLE_RE = re.compile(r"^\s*([0-9]+)(?:;(\S+))?\s*$")

# sbatch failures after which the controller may still have queued the job.
_MAYBE_SUBMITTED_ERRORS = ("Socket timed out", "timed out", "Zero Bytes were transmitted")


def parse_submission_output(stdout: str, count: int) -> list[SubmissionOutcome]:
    """One SubmissionOutcome per item, index 0..count-1.

    Lines that are not answer lines (e.g. a chatty login script) are ignored;
    for a repeated index the first line counts.
    """
    lines: dict[int, tuple[int, str]] = {}
    for line in stdout.splitlines():
        match = _OUTCOME_LINE_RE.match(line)
        if match:
            index = int(match.group(1))
            if 0 <= index < count and index not in lines:
                lines[index] = (int(match.group(2)), match.group(3))
    return [_outcome(index, lines.get(index)) for index in range(count)]


def _outcome(index: int, line: tuple[int, str] | None) -> SubmissionOutcome:
    if line is None:
        return SubmissionOutcome(
            index=index,
            kind=Outcome.UNKNOWN,
            job_id=None,
            error="no answer for this item (connection lost?): it may have been submitted",
        )
    returncode, message = line
    return classify_sbatch(index, returncode, message)


def classify_sbatch(index: int, returncode: int, message: str) -> SubmissionOutcome:
    """One answer (``rc``, sbatch's output or error on one line) as an Outcome.

    Used for the program's answer lines and for the answers kept in the
    site's record, so both read the same way.
    """
    if returncode == 0:
        match = _PARSABLE_RE.match(message)
        if match:
            return SubmissionOutcome(
                index=index,
                kind=Outcome.ACCEPTED,
                job_id=match.group(1),
                error="",
                cluster=match.group(2),
                returncode=0,
            )
        kind, error = Outcome.UNKNOWN, f"sbatch succeeded but printed no job id: {message!r}"
    elif returncode == CLAIMED_RC:
        kind, error = Outcome.CLAIMED, message
    elif returncode == RECORD_FAILED_RC:
        kind, error = Outcome.SITE_DOWN, message
    elif returncode > 128 or any(text in message for text in _MAYBE_SUBMITTED_ERRORS):
        # Killed by a signal mid-RPC, or a controller timeout: it may be queued.
        kind, error = Outcome.UNKNOWN, message
    elif is_controller_unreachable(message):
        # "Unable to contact slurm controller (connect failure)": nothing was queued.
        kind, error = Outcome.SITE_DOWN, message
    else:
        kind, error = Outcome.REFUSED, message
    return SubmissionOutcome(index=index, kind=kind, job_id=None, error=error, returncode=returncode)
