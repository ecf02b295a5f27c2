"""Batched submission: one exec, a tar stream of scripts, one answer line per item.

``build_submission_bundle`` packs the items into a tar, ``submission_argv``
runs the bash program ``submit.sh`` (shipped beside this file, read once at
import) with that tar on stdin, and ``parse_submission_output`` reads its
answer lines into ``SubmissionOutcome`` values (``classify_sbatch`` reads one
answer, also for the site's record that ``gateway.journal`` reads).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import Enum
from pathlib import Path

from gateway.profiles import MAX_SUBMIT_CONCURRENCY
from gateway.record import Record
from gateway.slurm.jobs import is_controller_unreachable
from gateway.slurm.queue import _TOKEN_RE

SUBMISSION_SETUP_FAILED = 97
"""Exit status of the submission program when it submitted nothing at all
(mktemp or tar failed); the reason is on its stderr."""

_MAX_ITEMS = 1_000_000  # a bound on one batch (answer lines carry the index)

# Runs as: bash -c PROGRAM aif-submit WORKERS  (stdin: the tar from build_submission_bundle).
# Every value (workdir, sbatch arguments, the record's paths) is read from files as
# data: nothing an item carries is ever part of the program's text, so no value can
# run anything. Written for bash >= 3.2 (no mapfile -d, which needs 4.4). Sent
# without its comment lines (the file keeps them): every submission carries it.
_SUBMISSION_PROGRAM = "".join(
    line
    for line in Path(__file__).with_name("submit.sh").read_text(encoding="utf-8").splitlines(keepends=True)
    if not line.lstrip().startswith("#")
)

# Answer codes the program uses besides sbatch's own exit status.
CLAIMED_RC = -2  # the item is already claimed in the site's record: not sent by us
RECORD_FAILED_RC = -3  # the site's record could not be written: not sent
TOO_LARGE_RC = -4  # the array has more tasks than the site's MaxArraySize: not claimed, not sent


class SubmissionItem(Record):
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


class ArrayMember(Record):
    """One spec of an array: its claim in the site's record (``ITEM.GEN``, with its own
    ``token`` and ``aif_id``; '' for no record). Its directory is made by its task when
    it starts (the array's script), not here: a submission makes no directory per task."""

    claim: str
    token: str
    aif_id: str


class ArraySubmission(Record):
    """ONE array job standing for several specs: task ``i`` is ``members[i]``.

    The program claims every member in the site's record (``intent TOKEN
    AIF_ID ARRAY_TOKEN TASK``), runs ONE ``sbatch --array=LIST`` for the
    members it claimed (a member someone else holds is left out of the list,
    so its task never runs), and answers each member ``ARRAYID_TASK``.
    ``output_dir`` is the array's own directory (``mkdir -p``); ``array_token``
    is the one all tasks carry as their comment.
    """

    script: str
    output_dir: str
    array_token: str
    members: tuple[ArrayMember, ...]
    extra_args: tuple[str, ...] = ()


Submission = SubmissionItem | ArraySubmission


def answer_count(items: Sequence[Submission]) -> int:
    """How many answers the program gives: one per item, one per member of an array."""
    return sum(len(i.members) if isinstance(i, ArraySubmission) else 1 for i in items)


class Outcome(str, Enum):
    """What became of one submitted item, as the dialect classifies it."""

    ACCEPTED = "accepted"  # sbatch gave a job id (an array member: ARRAYID_TASK)
    REFUSED = "refused"  # the scheduler refused it (Slurm's words in ``error``): not submitted
    SITE_DOWN = "site down"  # the controller could not be reached: not submitted, retryable
    UNKNOWN = "unknown"  # maybe submitted: resolve by token before anything else
    CLAIMED = "claimed"  # another submission with the same key holds this item: not sent by us
    TOO_LARGE = "too large"  # an array over the site's MaxArraySize: not sent, send it in smaller ones


class SubmissionOutcome(Record):
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
    """The bash program run as ``bash -c PROGRAM aif-submit WORKERS`` with the bundle on stdin.

    It unpacks the tar (three files) into ``mktemp -d`` (removed on exit),
    makes every workdir in one ``mkdir`` (an array's own directory, not its
    members': each task makes its own when it starts), then shares the items among WORKERS
    shells (item i to worker i mod WORKERS; 1 when not given), each running
    one sbatch at a time, and per item in its order: claims the item in the
    site's record (an ``intent`` line, created exclusively: an item someone
    already claimed is answered ``CLAIMED_RC`` and not sent), ``mkdir -p --
    workdir`` if set, ``sbatch --parsable [extra args]`` with the script on
    stdin (no script file: bash 5.1 and later pass a here-string through a
    pipe, older bash through a temporary file), appends the ``answer`` to the
    record, and prints exactly one line ``index<TAB>rc<TAB>job-id-or-error``
    (error text on one line).
    An array (:class:`ArraySubmission`) answers one line per member, its
    ``index`` counting members: each is claimed, ONE ``sbatch --array=LIST``
    runs for the members claimed, and each answer is ``ARRAYID_TASK``; the
    site's ``MaxArraySize`` (``scontrol show config``, read once, only when
    the bundle holds an array: asked as the program starts when its second
    argument is ``arrays``, else once the items are read) is checked first, and a larger array is
    answered ``TOO_LARGE_RC`` for every member, nothing claimed or sent.
    A failing item does not stop the batch; the program exits 0 after the
    last item, or SUBMISSION_SETUP_FAILED before the first. A signal (the
    connection dropped: SIGHUP, SIGPIPE, SIGTERM) is acted on only once the
    running sbatch returned and its answer is in the record; then it exits
    129/141/143 without starting another item (nor do the other workers,
    told by a mark in the temp dir), still removing the temp dir once every
    worker is done. Only one process writes to stdout: the other workers'
    answer lines follow once they are done (answer lines name their item,
    so their order carries nothing).
    Items without an answer line are "unknown" here; the site's record
    tells which of them were sent (``gateway.journal``). Over SSH the
    program is one argv element of about 7 KiB (the 128 KiB argv limit only
    bites if scripts were put on the command line). It spans several lines,
    which a csh-family login shell would not accept inside quotes.

    Measured on the 2-core sandbox (200 jobs): a plain ``sbatch`` loop
    1.15 s; this program, one worker, when the bundle held four files and a
    directory per job, 2.0 s, 0.2-0.8 s of it unpacking them (1,000 files
    created in a fresh directory of this machine's /tmp cost 0.6-0.9 ms
    each); two sbatch at a time, 200 plain sbatch in 0.71-0.84 s against
    1.24-1.39 s one at a time.
    """
    return _SUBMISSION_PROGRAM


def submission_argv(workers: int = 1, items: Sequence[Submission] = ()) -> list[str]:
    """argv for a transport: run ``submission_program()`` with bash, ``workers`` sbatch at a
    time; when ``items`` hold an array, the program asks the site's MaxArraySize as it starts."""
    if not 1 <= workers <= MAX_SUBMIT_CONCURRENCY:
        raise ValueError(f"workers must be 1 to {MAX_SUBMIT_CONCURRENCY}, not {workers}")
    arrays = ["arrays"] if any(isinstance(item, ArraySubmission) for item in items) else []
    return ["bash", "-c", _SUBMISSION_PROGRAM, "aif-submit", str(workers), *arrays]


def build_submission_bundle(items: Sequence[Submission], journal_dir: str = "") -> bytes:
    """An in-memory, byte-for-byte deterministic tar of the items: three files at most.

    ``journal`` (the site record's directory for this submission,
    NUL-terminated) when given; ``items``: per item, each NUL-terminated,
    ``S`` or ``A``, its workdir (an array's: its own directory), the number
    of its extra sbatch arguments and each of them, then for a job its claim,
    token and aif id (all three empty without a claim), for an array its
    token, its member count and each member's claim, token and aif id;
    ``scripts``: each item's script, NUL-terminated, without its
    last newline (the program's here-string adds it back).
    """
    if len(items) >= _MAX_ITEMS or answer_count(items) >= _MAX_ITEMS:
        raise ValueError(f"at most {_MAX_ITEMS - 1} items per batch")
    claims = any(
        item.claim if isinstance(item, SubmissionItem) else any(m.claim for m in item.members)
        for item in items
    )
    if claims and not journal_dir.startswith("/"):
        raise ValueError(f"items with claims need the record's absolute directory, not {journal_dir!r}")
    fields: list[str] = []
    scripts: list[str] = []
    for index, item in enumerate(items):
        if isinstance(item, ArraySubmission):
            _check_array(index, item)
            fields += ["A", item.output_dir, str(len(item.extra_args)), *item.extra_args]
            fields += [item.array_token, str(len(item.members))]
            for m in item.members:
                fields += [m.claim, m.token, m.aif_id]
        else:
            _check_item(index, item)
            fields += ["S", item.workdir, str(len(item.extra_args)), *item.extra_args]
            fields += [item.claim, item.token, item.aif_id] if item.claim else ["", "", ""]
        scripts.append(item.script[:-1] if item.script.endswith("\n") else item.script)
    files = [("journal", journal_dir.encode() + b"\0")] if journal_dir else []
    files += [
        ("items", "".join(f + "\0" for f in fields).encode()),
        ("scripts", "".join(text + "\0" for text in scripts).encode()),
    ]
    return ustar(files)


def _check_array(index: int, array: ArraySubmission) -> None:
    if len(array.members) < 1:
        raise ValueError(f"item {index}: an array without members")
    _check_item(index, SubmissionItem(array.script, array.output_dir, array.extra_args))
    if not array.output_dir or not _TOKEN_RE.match(array.array_token):
        raise ValueError(f"item {index}: an array needs its directory and token")
    for member in array.members:
        _check_item(index, SubmissionItem(array.script, "", (), *_claim_of(member)))


def _claim_of(member: ArrayMember) -> tuple[str, str, str]:
    return member.claim, member.token, member.aif_id


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


# -- the bundle's tar: three plain files, written here ------------------------------------
# (tarfile and the shutil it imports cost a submission 5 ms of start-up for what is a
# header block per file.)

_BLOCK = 512
_RECORD = 20 * _BLOCK  # tar pads an archive to whole records


def ustar(files: Sequence[tuple[str, bytes]]) -> bytes:
    """A POSIX ustar archive of regular files, byte for byte what ``tarfile`` writes for them
    with fixed metadata (mode 0600, owner and group 0 without names, mtime 0): deterministic."""
    out = bytearray()
    for name, data in files:
        raw = name.encode()
        if not raw or len(raw) > 100 or "/" in name:
            raise ValueError(f"not a plain file name for the bundle: {name!r}")
        header = bytearray(_BLOCK)
        header[0 : len(raw)] = raw
        header[100:108] = b"0000600\0"  # mode
        header[108:116] = b"0000000\0"  # uid
        header[116:124] = b"0000000\0"  # gid
        header[124:136] = b"%011o\0" % len(data)
        header[136:148] = b"00000000000\0"  # mtime
        header[148:156] = b"        "  # the checksum counts its own field as spaces
        header[156:157] = b"0"  # a regular file
        header[257:265] = b"ustar\x0000"
        header[148:155] = b"%06o\0" % sum(header)
        out += header
        out += data
        out += bytes(-len(data) % _BLOCK)
    out += bytes(2 * _BLOCK)  # the end of the archive
    out += bytes(-len(out) % _RECORD)
    return bytes(out)


_CLAIM_RE = re.compile(r"[0-9a-f]{8,64}-[0-9]+\.[0-9]+")
_OUTCOME_LINE_RE = re.compile(r"^([0-9]+)\t(-?[0-9]+)\t(.*)$")
# sbatch --parsable prints ID or ID;CLUSTER; the program answers an array's members ID_TASK.
_PARSABLE_RE = re.compile(r"^\s*([0-9]+(?:_[0-9]+)?)(?:;(\S+))?\s*$")
_MAX_ARRAY_SIZE_RE = re.compile(r"MaxArraySize=([0-9]+)")

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
    elif returncode == TOO_LARGE_RC:
        kind, error = Outcome.TOO_LARGE, message
    elif returncode > 128 or any(text in message for text in _MAYBE_SUBMITTED_ERRORS):
        # Killed by a signal mid-RPC, or a controller timeout: it may be queued.
        kind, error = Outcome.UNKNOWN, message
    elif is_controller_unreachable(message):
        # "Unable to contact slurm controller (connect failure)": nothing was queued.
        kind, error = Outcome.SITE_DOWN, message
    else:
        kind, error = Outcome.REFUSED, message
    return SubmissionOutcome(index=index, kind=kind, job_id=None, error=error, returncode=returncode)


def max_array_size_of(outcome: SubmissionOutcome) -> int | None:
    """The site's MaxArraySize a TOO_LARGE answer names (None for any other answer)."""
    if outcome.kind is not Outcome.TOO_LARGE:
        return None
    match = _MAX_ARRAY_SIZE_RE.search(outcome.error)
    return int(match.group(1)) if match else None
