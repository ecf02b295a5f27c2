"""Coalescing: many specs of one shape at one site become ONE Slurm job array. Pure.

Specs whose ``#SBATCH`` directives (account, partition, QOS, resources,
walltime), site set-up, modules and container are equal differ only in what
each task runs: its command or script, variables, directory and name. They
can share one array job, one sbatch and one controller RPC for all of them,
while every spec stays its own aif job: task ``i`` of the array is spec ``i``.

The array script holds one ``case`` arm per task. Each arm sets that spec's
environment (``export`` of quoted values), its directory (made by the task
when it starts, not at submission) and its job, all
rendered with the same quoting as a single job's script (``gateway.rendering``);
the user's script is one quoted word given to ``eval``, never spliced into the
program text, so nothing a spec holds can break out of its arm. Slurm writes
each task's output itself (``--output=DIR/slurm-%A_%a.out``, so its own
messages, a time limit or a cancellation, land there too) in a directory of
the array's own; the ledger keeps that path for ``aif logs``.

An array is known to Slurm by its token (``--comment=aif:TOKEN``, in squeue)
and its name ``aif-array.<the token's hex>`` (in finished-job records); a task
by the array plus its index, ``ARRAYID_TASK`` in Slurm's own notation.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Hashable, Sequence

from gateway import __version__
from gateway.profiles import SiteProfile
from gateway.record import Record
from gateway.rendering import (
    choose_partition,
    comment_safe,
    directive_line,
    export_lines,
    fill_site_path,
    launcher,
    memory_note,
    resource_directives,
    setup_lines,
    site_workdir,
)
from gateway.spec import JobSpec

ARRAY_NAME_PREFIX = "aif-array."
# Slurm's default MaxArraySize: the highest task index is one less. Used until the site's own is known.
DEFAULT_MAX_ARRAY_SIZE = 1001
# Slurm refuses batch scripts over max_script_size (4 MB by default): an array stays well below.
ARRAY_SCRIPT_MAX_BYTES = 1_000_000
ARRAYS_SUBDIR = ".aif/arrays"


def array_job_name(array_token: str) -> str:
    """The array's Slurm name, ``aif-array.HEX``: unique, and kept by Slurm's finished-job records."""
    return ARRAY_NAME_PREFIX + array_token.removeprefix("aif-tok-")


def array_output_dir(work_area: str, array_token: str) -> str:
    """Where Slurm writes the array's task outputs (``slurm-%A_%a.out``): a directory of its own."""
    return f"{work_area.rstrip('/')}/{ARRAYS_SUBDIR}/{array_token.removeprefix('aif-tok-')}"


def coalesce_key(spec: JobSpec, profile: SiteProfile, *, account: str | None) -> Hashable | None:
    """Specs with equal keys may share one array at this site; None for a spec that never does.

    A spec that is an array itself is never coalesced. The key is what the
    whole array shares: every directive but name, directory, output and
    comment; the site's set-up with the spec's modules and container
    runtime; and what the job runs under (srun, the container image).
    """
    if spec.array is not None:
        return None
    choice = choose_partition(spec, profile)
    return (
        profile.name,
        tuple(resource_directives(spec, profile, choice, account)),
        tuple(memory_note(spec, profile)),
        tuple(setup_lines(spec, profile)),
        tuple(launcher(spec, profile)),
    )


def group_by_key(keys: Sequence[Hashable | None], max_tasks: int) -> list[list[int]]:
    """Positions sharing a key, in order of first appearance, cut into runs of at most
    ``max_tasks``; positions whose key is None stand alone. A group of one is no array."""
    if max_tasks < 1:
        raise ValueError(f"an array holds at least one task, not {max_tasks}")
    groups: dict[Hashable, list[list[int]]] = {}
    order: list[list[int]] = []
    for position, key in enumerate(keys):
        if key is None:
            order.append([position])
            continue
        runs = groups.setdefault(key, [])
        if not runs or len(runs[-1]) >= max_tasks:
            runs.append([])
            order.append(runs[-1])
        runs[-1].append(position)
    return order


class ArrayTask(Record):
    """One spec as one task of an array."""

    job_id: str  # the aif id
    index: int  # SLURM_ARRAY_TASK_ID
    workdir: str  # the spec's own directory (absolute, at the site)
    stdout_path: str  # where Slurm writes this task's output (%A_%a left for Slurm)


class RenderedArray(Record):
    site: str
    script: str
    partition: str
    qos: str | None
    slurm_name: str  # every task's Slurm name: the array's
    output_dir: str  # the array's own directory (its --chdir and where the outputs go)
    work_area: str
    tasks: tuple[ArrayTask, ...]


def render_array_script(
    members: Sequence[tuple[JobSpec, str]],
    profile: SiteProfile,
    *,
    account: str | None,
    user: str,
    array_token: str,
) -> RenderedArray:
    """One array script for ``members`` (spec, aif id): task ``i`` runs spec ``i``.

    The members must share one :func:`coalesce_key` at ``profile``'s site.
    """
    if len(members) < 2:
        raise ValueError("an array of specs has at least two members")
    first = members[0][0]
    key = coalesce_key(first, profile, account=account)
    if key is None or any(coalesce_key(s, profile, account=account) != key for s, _ in members[1:]):
        raise ValueError("these specs do not share one shape: they cannot be one array")
    choice = choose_partition(first, profile)
    rules = profile.slurm
    work_area = fill_site_path(rules.work_area, user=user, account=account, site=profile.name)
    output_dir = array_output_dir(work_area, array_token)
    stdout_path = f"{output_dir}/slurm-%A_%a.out"
    name = array_job_name(array_token)
    directives: list[tuple[str, str | None]] = [("job-name", name)]
    directives += resource_directives(first, profile, choice, account)
    directives += [
        ("array", f"0-{len(members) - 1}"),
        ("chdir", output_dir),
        ("output", stdout_path),
        ("comment", f"aif:{array_token}"),
    ]
    lines = [rules.shebang]
    lines += [directive_line(k, v, profile) for k, v in directives]
    lines.append(
        f"# aif {__version__}: {len(members)} specs as one array for {profile.name} "
        f"({comment_safe(profile.factory)}), partition {choice.partition.name}"
    )
    lines += memory_note(first, profile)
    lines += [
        "set -eo pipefail",
        "",
        "# Task i is spec i: its id, variables, directory and job; every value quoted.",
        'case "${SLURM_ARRAY_TASK_ID:-}" in',
    ]
    tasks = []
    for index, (spec, job_id) in enumerate(members):
        workdir = site_workdir(spec, profile, work_area, job_id)
        tasks.append(ArrayTask(job_id, index, workdir, stdout_path))
        # Indenting a line never reaches inside a quoted multi-line value: only its first line moves.
        arm = [
            f"# {comment_safe(spec.source)} (sha256 {spec.sha256[:12] or '-'})",
            *export_lines(spec, profile, job_id, user, account),
            f"aif_workdir={shlex.quote(workdir)}",
            "aif_job() {",
            "    " + _job_line(spec, profile),
            "}",
            ";;",
        ]
        lines += [f"{index})", *("    " + line for line in arm)]
    lines += [
        "*)",
        '    echo "aif: task ${SLURM_ARRAY_TASK_ID:-?} is not one of this array\'s" >&2',
        "    exit 64",
        "    ;;",
        "esac",
        # The task makes its own directory: a submission of many specs makes none per task
        # (one mkdir each is what a site's file system pays most for, and the tasks that
        # never run need none).
        'mkdir -p -- "$aif_workdir"',
        'cd -- "$aif_workdir"',
    ]
    lines += setup_lines(first, profile)
    lines += ["# the job", "aif_job", ""]
    return RenderedArray(
        site=profile.name,
        script="\n".join(lines) + "\n",
        partition=choice.partition.name,
        qos=choice.qos,
        slurm_name=name,
        output_dir=output_dir,
        work_area=work_area,
        tasks=tuple(tasks),
    )


class Batch(Record):
    """What one sbatch sends: the job at ``positions[0]`` on its own (``array`` None), or the
    jobs at ``positions`` as the tasks of one array, in that order."""

    positions: tuple[int, ...]
    array: RenderedArray | None = None
    array_token: str = ""


def plan_batches(
    specs: Sequence[JobSpec],
    job_ids: Sequence[str],
    profile: SiteProfile,
    *,
    account: str | None,
    user: str,
    max_tasks: int,
    new_token: Callable[[], str],
    coalesce: bool = True,
) -> list[Batch]:
    """The sbatch calls that send these jobs to ``profile``'s site: specs of one shape as
    arrays of at most ``max_tasks`` tasks (and of a script Slurm accepts), the rest alone.

    In order of first appearance; ``new_token`` gives each array its token.
    """
    keys = [coalesce_key(spec, profile, account=account) if coalesce else None for spec in specs]
    batches: list[Batch] = []

    def add(group: list[int]) -> None:
        if len(group) == 1:
            batches.append(Batch((group[0],)))
            return
        token = new_token()
        members = [(specs[i], job_ids[i]) for i in group]
        rendered = render_array_script(members, profile, account=account, user=user, array_token=token)
        if len(rendered.script.encode()) > ARRAY_SCRIPT_MAX_BYTES:
            add(group[: len(group) // 2])
            add(group[len(group) // 2 :])
            return
        batches.append(Batch(tuple(group), rendered, token))

    for group in group_by_key(keys, max_tasks):
        add(group)
    return batches


def _job_line(spec: JobSpec, profile: SiteProfile) -> str:
    """The task's job as one quoted command: the user's script is data given to eval."""
    words = launcher(spec, profile)
    if spec.job.command is not None:
        return shlex.join([*words, *spec.job.command])
    script = spec.job.script or ""
    if words:
        return shlex.join([*words, "bash", "-c", script])
    # eval runs it in this shell, as a single job's script runs (set -eo pipefail holds).
    return "eval " + shlex.quote(script)
