"""Turn a spec into the batch script one site really accepts. Pure functions.

Two kinds of text reach a script, and they are kept apart:
- ``#SBATCH`` lines cannot be quoted, so only values of a strict character
  set ever reach them (checked again here, whatever the spec layer did);
- everything else goes into the body, quoted with ``shlex.quote``.
The directive block ends at the first command, after which sbatch reads no
more ``#SBATCH`` lines, so a user's script cannot add one.
"""

from __future__ import annotations

import re
import shlex

from gateway import __version__
from gateway.errors import NoFit, ProfileError, SpecError
from gateway.profiles import Partition, QosRule, SiteProfile
from gateway.record import Record
from gateway.spec import JobSpec
from gateway.tomlcheck import format_walltime, show_value

_DIRECTIVE_VALUE = re.compile(r"[A-Za-z0-9._+/:%=,@{}-]*")
RENDER_JOB_ID = "aif-render"
# Linux's PATH_MAX (4096) less room for the output files Slurm and the job write in it.
SITE_WORKDIR_MAX_LENGTH = 4000


def fill_site_path(template: str, *, user: str, account: str | None, site: str) -> str:
    """A profile path with {user}, {account} and {site} filled in."""
    return template.replace("{user}", user).replace("{account}", account or "").replace("{site}", site)


class PartitionChoice(Record):
    partition: Partition
    qos: str | None
    cpus_per_task: int | None


class RenderedJob(Record):
    """A batch script and the facts about it that submission and fetch need."""

    site: str
    script: str
    partition: str
    qos: str | None
    workdir: str  # absolute, at the site
    stdout_path: str  # absolute; %j / %A_%a left for Slurm
    slurm_name: str  # the job's name in Slurm: the spec's name and the aif id
    work_area: str  # the site's work area for this user (the site's record lives under it)


def slurm_job_name(spec_name: str, job_id: str) -> str:
    """Slurm's name for the job: ``NAME.AIF_ID``.

    The aif id in the name is what proves a finished job is this one: Slurm's
    records of finished jobs (sacct, also ``sacct -c`` without slurmdbd) keep
    the name but not the comment that carries the submission token. Whatever
    the workdir a spec names, the name holds it.
    """
    return f"{spec_name}.{job_id}"


# -- partition and QOS ----------------------------------------------------------------


def choose_partition(spec: JobSpec, profile: SiteProfile) -> PartitionChoice:
    """The first partition (in the profile's order) the job fits, with its QOS.

    Raises NoFit naming, for every partition, why it does not fit.
    """
    if profile.batch_system != "slurm":
        raise NoFit(
            f"site {profile.name} runs {profile.batch_system}, which aif cannot submit to yet "
            "(only Slurm is supported)"
        )
    reasons: list[str] = []
    for partition in profile.partitions:
        why_not = _partition_misfit(spec, profile, partition)
        if why_not is None:
            cpus, _ = _cpus_per_task(spec, profile)
            qos = _choose_qos(spec, profile, partition)
            if isinstance(qos, _NoQos):
                reasons.append(f"{partition.name}: {qos.reason}")
                continue
            return PartitionChoice(partition=partition, qos=qos, cpus_per_task=cpus)
        reasons.append(f"{partition.name}: {why_not}")
    raise NoFit(f"{spec.name} fits no partition at {profile.name}: " + "; ".join(reasons))


def _cpus_per_task(spec: JobSpec, profile: SiteProfile) -> tuple[int | None, str | None]:
    """The --cpus-per-task to send, and why the spec breaks the site's CPUs-per-GPU rule (if it does)."""
    res = spec.resources
    rules = profile.slurm
    if rules.cpus_per_gpu and res.gpus_per_node:
        by_rule = max(1, rules.cpus_per_gpu * res.gpus_per_node // res.tasks_per_node)
        if res.cpus_per_task is None:
            return by_rule, None
        if rules.enforce_cpus_per_gpu and res.cpus_per_task != by_rule:
            return res.cpus_per_task, (
                f"the site requires {rules.cpus_per_gpu} CPUs per GPU, so cpus_per_task must be "
                f"{by_rule} for {res.gpus_per_node} GPUs and {res.tasks_per_node} tasks per node "
                f"(the spec asks {res.cpus_per_task})"
            )
    return res.cpus_per_task, None


def _partition_misfit(spec: JobSpec, profile: SiteProfile, p: Partition) -> str | None:
    res = spec.resources
    if res.gpus_per_node and not p.gpus_per_node:
        return "has no GPUs"
    if not res.gpus_per_node and p.gpus_per_node:
        return "is for GPU jobs"
    if res.gpus_per_node > p.gpus_per_node:
        return f"{res.gpus_per_node} GPUs per node asked, {p.gpus_per_node} available"
    if res.gpu_model and res.gpu_model.lower() != p.gpu_model.lower():
        return f"GPU model {res.gpu_model} asked, it has {p.gpu_model or 'none'}"
    if res.nodes > p.max_nodes:
        return f"{res.nodes} nodes asked, at most {p.max_nodes}"
    if res.walltime_seconds > p.max_walltime_seconds:
        return f"walltime {res.walltime} asked, at most {p.max_walltime}"
    cpus_per_task, violation = _cpus_per_task(spec, profile)
    if violation:
        return violation
    cores = (cpus_per_task or 1) * res.tasks_per_node
    if cores > p.cpus_per_node:
        return f"{cores} cores per node asked, {p.cpus_per_node} usable"
    if res.memory_per_node_mb and res.memory_per_node_mb > p.memory_per_node_mb:
        return f"memory {res.memory_per_node} per node asked, {p.memory_per_node} usable"
    return None


class _NoQos(Record):
    reason: str


def _choose_qos(spec: JobSpec, profile: SiteProfile, p: Partition) -> str | _NoQos | None:
    rules = [r for r in profile.qos_rules if r.partition == p.name]
    for rule in rules:
        if _qos_fits(spec, rule):
            return rule.name
    if p.qos:
        return p.qos
    if profile.slurm.qos_required:
        if not rules:
            return _NoQos("no QOS is defined for it and the site requires one")
        limits = ", ".join(f"{r.name} ({r.min_nodes}-{r.max_nodes} nodes, {r.max_walltime})" for r in rules)
        return _NoQos(f"no QOS allows {spec.resources.nodes} nodes for {spec.resources.walltime}: {limits}")
    return None


def _qos_fits(spec: JobSpec, rule: QosRule) -> bool:
    res = spec.resources
    return rule.min_nodes <= res.nodes <= rule.max_nodes and res.walltime_seconds <= rule.max_walltime_seconds


# -- the script -------------------------------------------------------------------------


def render_batch_script(
    spec: JobSpec,
    profile: SiteProfile,
    *,
    account: str | None,
    user: str,
    job_id: str = RENDER_JOB_ID,
    token: str | None = None,
) -> RenderedJob:
    """The complete batch script for ``spec`` at ``profile``'s site.

    ``job_id`` is the federated id (fills ``{id}`` in the workdir and
    ``AIF_JOB_ID``); ``token`` goes into ``--comment`` so the job can be
    found again if the answer to sbatch is lost.
    """
    choice = choose_partition(spec, profile)
    rules = profile.slurm
    work_area = fill_site_path(rules.work_area, user=user, account=account, site=profile.name)
    workdir = site_workdir(spec, profile, work_area, job_id)
    stdout_name = "slurm-%A_%a.out" if spec.array else "slurm-%j.out"
    stdout_path = f"{workdir}/{stdout_name}"

    directives: list[tuple[str, str | None]] = [("job-name", slurm_job_name(spec.name, job_id))]
    directives += resource_directives(spec, profile, choice, account)
    if spec.array:
        limit = f"%{spec.array.parallel}" if spec.array.parallel else ""
        directives.append(("array", f"0-{spec.array.size - 1}{limit}"))
    directives += [("chdir", workdir), ("output", stdout_path)]
    if token:
        directives.append(("comment", f"aif:{token}"))

    lines = [rules.shebang]
    lines += [directive_line(key, value, profile) for key, value in directives]
    lines.append(
        f"# aif {__version__}: {comment_safe(spec.source)} (sha256 {spec.sha256[:12] or '-'}) "
        f"for {profile.name} ({comment_safe(profile.factory)}), partition {choice.partition.name}"
    )
    lines += memory_note(spec, profile)
    lines.append("set -eo pipefail")
    lines.append("")
    lines += export_lines(spec, profile, job_id, user, account)
    lines += setup_lines(spec, profile)
    lines += _job_lines(spec, profile)
    return RenderedJob(
        site=profile.name,
        script="\n".join(lines) + "\n",
        partition=choice.partition.name,
        qos=choice.qos,
        workdir=workdir,
        stdout_path=stdout_path,
        slurm_name=slurm_job_name(spec.name, job_id),
        work_area=work_area,
    )


def site_workdir(spec: JobSpec, profile: SiteProfile, work_area: str, job_id: str) -> str:
    """The job's absolute directory at the site; refused when the site's paths would be too long."""
    workdir = f"{work_area.rstrip('/')}/{spec.workdir_for(job_id)}".rstrip("/")
    if len(workdir) > SITE_WORKDIR_MAX_LENGTH:
        raise SpecError(
            f"{spec.source}: job.workdir: at {profile.name} the job's directory would be "
            f"{len(workdir)} characters long ({show_value(workdir)}); "
            f"at most {SITE_WORKDIR_MAX_LENGTH} allowed"
        )
    return workdir


def resource_directives(
    spec: JobSpec, profile: SiteProfile, choice: PartitionChoice, account: str | None
) -> list[tuple[str, str | None]]:
    """What the job asks of the scheduler: account, partition, QOS, resources, walltime.

    Everything but the job's own name, array, directory, output and comment: specs
    whose directives are equal may share one job array (``gateway.arrays``).
    """
    res = spec.resources
    rules = profile.slurm
    directives: list[tuple[str, str | None]] = []
    if account:
        directives.append(("account", account))
    directives.append(("partition", choice.partition.name))
    if choice.qos:
        directives.append(("qos", choice.qos))
    directives += [
        ("nodes", str(res.nodes)),
        ("ntasks-per-node", str(res.tasks_per_node)),
    ]
    if res.gpus_per_node:
        directives.append(_gpu_directive(rules.gpu_request, res.gpus_per_node, choice.partition))
    if choice.cpus_per_task:
        directives.append(("cpus-per-task", str(choice.cpus_per_task)))
    if res.memory_per_node and rules.send_memory:
        directives.append(("mem", res.memory_per_node))
    directives.append(("time", format_walltime(res.walltime_seconds)))
    if choice.partition.whole_node:
        directives.append(("exclusive", None))
    return directives


def memory_note(spec: JobSpec, profile: SiteProfile) -> list[str]:
    if spec.resources.memory_per_node and not profile.slurm.send_memory:
        return [
            f"# memory_per_node {spec.resources.memory_per_node} is not sent: "
            f"{profile.name} does not accept --mem"
        ]
    return []


def _gpu_directive(style: str, gpus: int, partition: Partition) -> tuple[str, str]:
    model = partition.gpu_model.lower()
    if style == "gres":
        return ("gres", f"gpu:{gpus}")
    if style == "gres-typed":
        return ("gres", f"gpu:{model}:{gpus}")
    if style == "gpus-per-node-typed":
        return ("gpus-per-node", f"{model}:{gpus}")
    return ("gpus-per-node", str(gpus))


def directive_line(key: str, value: str | None, profile: SiteProfile) -> str:
    if value is None:
        return f"#SBATCH --{key}"
    # Defence in depth: the spec, config and profile layers already hold these
    # values to safe characters; a directive line has no quoting at all.
    if not _DIRECTIVE_VALUE.fullmatch(value):
        raise ProfileError(f"{profile.source}: refusing unsafe value {value!r} for #SBATCH --{key}")
    return f"#SBATCH --{key}={value}"


def comment_safe(text: str) -> str:
    return re.sub(r"[^\x20-\x7e]", "?", text)


def export_lines(
    spec: JobSpec, profile: SiteProfile, job_id: str, user: str, account: str | None
) -> list[str]:
    """The job's own environment: its aif id, the site, its variables and its input datasets."""
    lines: list[str] = [
        f"export AIF_JOB_ID={shlex.quote(job_id)}",
        f"export AIF_SITE={shlex.quote(profile.name)}",
    ]
    for name, value in spec.environment.variables:
        lines.append(f"export {name}={shlex.quote(value)}")
    for dataset_name in spec.data.inputs:
        dataset = profile.dataset(dataset_name)
        if dataset is None:
            raise NoFit(f"{spec.name} needs dataset {dataset_name}, which {profile.name} does not hold")
        path = fill_site_path(dataset.path, user=user, account=account, site=profile.name)
        var = "AIF_INPUT_" + re.sub(r"[^A-Z0-9]", "_", dataset_name.upper())
        lines.append(f"export {var}={shlex.quote(path)}")
    return lines


def setup_lines(spec: JobSpec, profile: SiteProfile) -> list[str]:
    """The site's set-up for the job: srun's CPUs, the site's lines, modules, the container runtime."""
    env = profile.environment
    # Since Slurm 22.05 srun no longer inherits --cpus-per-task from the batch job.
    lines = [
        'if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"; fi'
    ]
    if env.setup or spec.environment.modules:
        lines.append("")
        lines.append("# site set-up")
        lines += list(env.setup)
    if spec.environment.modules:
        if not env.module_command:
            raise NoFit(f"{spec.name} asks for modules, but {profile.name} has no module system")
        for module in spec.environment.modules:
            lines.append(f"{env.module_command} {shlex.quote(module)}")
    if spec.environment.container:
        if not env.container_exec:
            raise NoFit(f"{spec.name} asks for a container, but {profile.name} has no container runtime")
        lines += list(env.container_setup)
    lines.append("")
    return lines


def launcher(spec: JobSpec, profile: SiteProfile) -> list[str]:
    """What the job's command runs under: srun for more than one task, the container runtime."""
    res = spec.resources
    words: list[str] = []
    if res.nodes * res.tasks_per_node > 1:
        words = ["srun"]
    if spec.environment.container:
        words += [*profile.environment.container_exec, spec.environment.container]
    return words


def _job_lines(spec: JobSpec, profile: SiteProfile) -> list[str]:
    words = launcher(spec, profile)
    if spec.job.command is not None:
        return ["# the job", shlex.join([*words, *spec.job.command]), ""]
    script = spec.job.script or ""
    if words:
        # The user's script runs inside the launcher (container / srun), as one bash -c argument.
        return ["# the job", shlex.join([*words, "bash", "-c", script]), ""]
    return ["# the job: the spec's script, as written", script.rstrip("\n"), ""]
