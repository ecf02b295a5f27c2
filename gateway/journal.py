"""The site's own record of what aif sent: durable proof of what was and was not submitted.

Pure: the argv that reads (and fences) the record, and the parser for what it
prints. The submission program (``gateway.slurm``) writes the record.

Layout, in the site's work area (no cleanup of aif ever deletes it)::

    WORK_AREA/.aif/submissions/KEY/ITEM.GEN

One directory per submission key (``aif submit --key``), one file per claim:
``ITEM`` labels a spec by its resolved content (``DIGEST-N``, the N-th spec
of that content in the submission) and ``GEN`` counts the attempts to send it.
A claim file is created exclusively (O_EXCL), so an item is claimed once:

- ``intent<TAB>TOKEN<TAB>AIF_ID``: written BEFORE sbatch runs; a spec sent as
  one task of an array (``gateway.arrays``) adds ``<TAB>ARRAY_TOKEN<TAB>TASK``:
  the array's token, which Slurm carries, and the task that is this spec;
- ``answer<TAB>RC<TAB>JOB-ID-OR-ERROR``: appended the moment sbatch answered
  (an array's member: ``ARRAYID_TASK``, Slurm's own notation);
- ``fence<TAB>TOKEN``: written instead of an intent by an aif that proves the
  job was never sent: once fenced, no submission can claim that generation,
  so "never sent" stays true. A later attempt claims the next generation.

So, days later and from any machine: an answer tells the Slurm id; a fence,
or a refusal in the answer, proves nothing was sent; an intent without an
answer is in doubt until the job is found by its token or its name.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from enum import Enum

from gateway.record import Record
from gateway.slurm import Outcome, SubmissionOutcome, classify_sbatch

RECORD_SUBDIR = ".aif/submissions"
KEY_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
KEY_ALLOWED = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
_KEY_RE = re.compile(KEY_PATTERN)
_CLAIM_NAME_RE = re.compile(r"([0-9a-f]{8,64}-[0-9]+)\.([0-9]+)")


def is_valid_key(key: str) -> bool:
    return bool(_KEY_RE.fullmatch(key))


def new_key() -> str:
    """A generated submission key: sortable by time, unique by chance (80 random bits)."""
    return time.strftime("k%Y%m%d-%H%M%S-", time.gmtime()) + os.urandom(10).hex()  # as secrets.token_hex


def record_dir(work_area: str, key: str) -> str:
    """The record's directory for one submission key at a site."""
    if not is_valid_key(key):
        raise ValueError(f"not a submission key: {key!r}")
    return f"{work_area.rstrip('/')}/{RECORD_SUBDIR}/{key}"


def item_label(content_digest: str, occurrence: int) -> str:
    """A spec's label in its submission: its content digest and which copy of it this is."""
    return f"{content_digest[:32]}-{occurrence}"


def claim_name(item: str, gen: int) -> str:
    return f"{item}.{gen}"


# -- reading the record (and fencing) --------------------------------------------------

_READ_PROGRAM = r"""set -u
set -C
index=0
while [ "$#" -gt 0 ]; do
    case $1 in
    fence)
        # Proves a claim was never sent: create it first, exclusively.
        [ -d "$2" ] || mkdir -p -- "$2" 2>/dev/null
        if printf 'fence\t%s\n' "$4" 2>/dev/null >"$2/$3"; then
            printf 'fenced\t%s\t%s\n' "$2" "$3"
        fi
        shift 4
        ;;
    read)
        for file in "$2"/*; do
            [ -f "$file" ] || continue
            while IFS= read -r line || [ -n "$line" ]; do
                printf 'line\t%d\t%s\t%s\n' "$index" "${file##*/}" "$line"
            done <"$file"
        done
        index=$((index + 1))
        shift 2
        ;;
    *)
        echo "aif-record: unknown request: $1" >&2
        exit 2
        ;;
    esac
done
echo "end"
"""


class Fence(Record):
    """Claim ``claim`` in ``directory`` for ``token`` unless it is claimed already."""

    directory: str
    claim: str
    token: str


def read_record_argv(directories: Sequence[str], fences: Sequence[Fence] = ()) -> list[str]:
    """One command: fence the given claims first, then print every claim of ``directories``.

    Fences come first, so what is read afterwards shows which fences took.
    """
    argv = ["bash", "-c", _READ_PROGRAM, "aif-record"]
    for fence in fences:
        if not fence.directory.startswith("/") or not _CLAIM_NAME_RE.fullmatch(fence.claim):
            raise ValueError(f"not a claim to fence: {fence!r}")
        argv += ["fence", fence.directory, fence.claim, fence.token]
    for directory in directories:
        if not directory.startswith("/"):
            raise ValueError(f"not an absolute record directory: {directory!r}")
        argv += ["read", directory]
    return argv


class ClaimStatus(str, Enum):
    SENT = "sent"  # sbatch accepted it: the answer holds its Slurm id
    NOT_SENT = "not sent"  # fenced, or sbatch refused it / the site was down: proven
    IN_DOUBT = "in doubt"  # an intent with no answer (or an answer that may mean queued)


class Claim(Record):
    """One claim file of the record."""

    name: str  # ITEM.GEN
    token: str
    aif_id: str  # '' for a fence
    fenced: bool
    answer: SubmissionOutcome | None
    array_token: str = ""  # a member of an array: the token the array carries in Slurm
    array_task: int | None = None  # ...and its task, the SLURM_ARRAY_TASK_ID that is this spec

    @property
    def item(self) -> str:
        return self.name.rpartition(".")[0]

    @property
    def gen(self) -> int:
        return int(self.name.rpartition(".")[2])

    @property
    def status(self) -> ClaimStatus:
        if self.fenced:
            return ClaimStatus.NOT_SENT
        if self.answer is None or self.answer.kind is Outcome.UNKNOWN:
            return ClaimStatus.IN_DOUBT
        if self.answer.kind is Outcome.ACCEPTED:
            return ClaimStatus.SENT
        return ClaimStatus.NOT_SENT

    @property
    def slurm_job_id(self) -> str | None:
        return self.answer.job_id if self.answer is not None else None


class RecordRead(Record):
    """What one read of the record gave: the claims per directory, and the fences that took."""

    claims: tuple[dict[str, Claim], ...]  # per directory asked, claim name -> claim
    fenced: frozenset[tuple[str, str]]  # (directory, claim)

    def latest(self, directory_index: int, item: str) -> Claim | None:
        """The highest generation claimed for ``item``."""
        found = [c for c in self.claims[directory_index].values() if c.item == item]
        return max(found, key=lambda c: c.gen) if found else None


class RecordUnreadable(ValueError):
    """The output is not what the read program prints (cut short, or something else answered)."""


def parse_record(stdout: str, directories: int) -> RecordRead:
    """The claims the read program printed. A missing ``end`` line means the output was cut."""
    lines: dict[int, dict[str, list[str]]] = {i: {} for i in range(directories)}
    fenced: set[tuple[str, str]] = set()
    complete = False
    for line in stdout.splitlines():
        if line == "end":
            complete = True
            continue
        kind, _, rest = line.partition("\t")
        if kind == "fenced":
            directory, _, claim = rest.rpartition("\t")
            fenced.add((directory, claim))
        elif kind == "line":
            index_text, _, rest = rest.partition("\t")
            name, _, content = rest.partition("\t")
            if index_text.isdigit() and int(index_text) < directories and _CLAIM_NAME_RE.fullmatch(name):
                lines[int(index_text)].setdefault(name, []).append(content)
    if not complete:
        raise RecordUnreadable("the site's record could not be read whole (no end line)")
    claims = tuple(
        {name: _claim(name, content) for name, content in lines[i].items()} for i in range(directories)
    )
    return RecordRead(claims=claims, fenced=frozenset(fenced))


def _claim(name: str, content: list[str]) -> Claim:
    first = content[0].split("\t")
    fenced = first[0] == "fence"
    token = first[1] if len(first) > 1 else ""
    aif_id = first[2] if len(first) > 2 and not fenced else ""
    answer = None
    for line in content[1:]:
        kind, _, rest = line.partition("\t")
        rc_text, _, message = rest.partition("\t")
        if kind == "answer" and re.fullmatch(r"-?[0-9]+", rc_text):
            answer = classify_sbatch(0, int(rc_text), message)
            break
    if first[0] not in ("intent", "fence"):
        # Not ours, or torn: treat as an intent of unknown outcome.
        fenced = False
    array_token, array_task = "", None
    if first[0] == "intent" and len(first) > 4 and first[4].isdigit():
        array_token, array_task = first[3], int(first[4])
    return Claim(
        name=name,
        token=token,
        aif_id=aif_id,
        fenced=fenced,
        answer=answer,
        array_token=array_token,
        array_task=array_task,
    )
