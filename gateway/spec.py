"""The portable job spec, version 1: one TOML file that runs at any AI Factory.

Validated once, here, at the TOML boundary; everything past this module
works on frozen dataclasses (records: :mod:`gateway.record` says why they
are declared as subclasses of Record). Key names are a public contract.

Fields that end up in ``#SBATCH`` lines or in paths (name, workdir, dataset
and site names, GPU model) are held to a strict character set, because a
directive line cannot be quoted. Fields that reach the script body (command
arguments, the script, variable values, modules, container) may hold any
text: the renderer quotes them.
"""

from __future__ import annotations

import functools
import importlib
import re
from typing import TYPE_CHECKING, Any

from gateway.errors import SpecError
from gateway.pathtext import path_text
from gateway.record import Record
from gateway.tomlcheck import (
    Table,
    parse_toml_bytes,
    read_size,
    read_walltime,
)

if TYPE_CHECKING:
    from pathlib import Path

SPEC_VERSION = 1
SENSITIVITIES = ("public", "internal", "sensitive")

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}"
NAME_ALLOWED = "expected 1-128 characters: letters, digits and . _ + - (starting with a letter or digit)"
SITE_PATTERN = r"[a-z0-9][a-z0-9-]{0,63}"
SITE_ALLOWED = "expected a site name: lowercase letters, digits and -"
IDENT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
IDENT_ALLOWED = "expected letters, digits and . _ - (up to 64)"
SECTOR_PATTERN = r"[a-z][a-z0-9-]{0,31}"
VARIABLE_PATTERN = r"[A-Za-z_][A-Za-z0-9_]{0,127}"
VARIABLE_ALLOWED = "expected an environment variable name: letters, digits and _, not starting with a digit"
COUNTRY_PATTERN = r"[A-Z]{2}"
WORKDIR_PLACEHOLDERS = ("name", "id")
# A relative path of safe characters: it reaches #SBATCH --chdir/--output.
RELPATH_PATTERN = r"[A-Za-z0-9._+/-]+"
RELPATH_ALLOWED = "expected a relative path of letters, digits and . _ + - /, without '..'"
NO_CONTROL_PATTERN = r"[^\x00-\x1f\x7f]+"
CONTAINER_PATTERN = r"[^\s\x00-\x1f\x7f]{1,512}"
# Bounds on what a spec may hold, so a runaway value is refused here and not
# half-way through a site's sbatch. Paths: what file systems and tools take
# without surprises (a name between slashes is at most 255 bytes in Linux).
PATH_MAX_LENGTH = 1024
PATH_PART_MAX_LENGTH = 255
# One argument or environment value: Linux's limit for one string given to exec.
ARGUMENT_MAX_BYTES = 131_072
# The whole script: well under Slurm's default batch script limit (4 MB).
SCRIPT_MAX_BYTES = 1_048_576
MAX_ARGUMENTS = 4096
MAX_VARIABLES = 1024
MAX_LIST_ITEMS = 256
# The longest aif job id, ``aif-`` and 10 characters, which fills {id}.
LONGEST_JOB_ID = "aif-" + "x" * 10
DEFAULT_WALLTIME = "01:00:00"
# Each job its own directory by default: reruns of one spec never overwrite outputs.
DEFAULT_WORKDIR = "{name}/{id}"


class JobSection(Record):
    """The spec's ``[job]``: its name and sector, what runs (a command or a script) and where."""

    name: str
    sector: str | None
    command: tuple[str, ...] | None
    script: str | None
    workdir: str  # a template: {name} and {id} are filled in at submission


class Resources(Record):
    """The spec's ``[resources]``; memory and walltime also as numbers (MB, seconds)."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int | None
    memory_per_node: str | None
    memory_per_node_mb: int | None
    walltime: str
    walltime_seconds: int
    gpu_model: str | None


class Environment(Record):
    """The spec's ``[environment]``: container, modules and variables."""

    container: str | None
    modules: tuple[str, ...]
    variables: tuple[tuple[str, str], ...]


class DataSection(Record):
    """The spec's ``[data]``: input datasets, their sensitivity, and the outputs to fetch."""

    inputs: tuple[str, ...]
    sensitivity: str
    outputs: tuple[str, ...]


class PlacementSection(Record):
    """The spec's ``[placement]``: a pinned site, excluded sites, allowed countries."""

    site: str | None
    exclude: tuple[str, ...]
    countries: tuple[str, ...]


class ArraySection(Record):
    """The spec's ``[array]``: how many tasks, and how many may run at once (None: no limit)."""

    size: int
    parallel: int | None


class JobSpec(Record):
    """A validated job spec; ``source`` and ``sha256`` identify the file it came from."""

    job: JobSection
    resources: Resources
    environment: Environment
    data: DataSection
    placement: PlacementSection
    array: ArraySection | None
    source: str
    sha256: str

    @property
    def name(self) -> str:
        return self.job.name

    def workdir_for(self, job_id: str) -> str:
        """The workdir template with {name} and {id} filled in (a safe relative path)."""
        return self.job.workdir.replace("{name}", self.job.name).replace("{id}", job_id)

    def content_digest(self) -> str:
        """sha256 of what the spec says once resolved (defaults filled in), not of its file.

        Two files that differ only in layout, comments, key order or name
        resolve to the same digest; any change to what would run does not.
        """
        import json  # not needed to read or render a spec: not imported at start-up

        content = {k: v for k, v in _plain(self).items() if k not in ("source", "sha256")}
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest: str = _sha256()(canonical.encode("utf-8")).hexdigest()  # CPython's own, without hashlib
        return digest


def _plain(value: Any) -> Any:
    """What ``json.dumps(dataclasses.asdict(value))`` sees, without asdict's deep copies (a
    fifth of a millisecond a spec): records as dicts of their fields, lists and tuples as lists."""
    if isinstance(value, Record):
        # Field order does not matter: the digest's JSON sorts the keys.
        return {name: _plain(getattr(value, name)) for name in value._record_fields_}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def load_spec(path: str | Path) -> JobSpec:
    """Read and validate a spec file; every problem is a one-line ``SpecError``."""
    source = path_text(path)  # as str(Path(path)) names it
    raw_bytes = _read(source)
    data = parse_toml_bytes(raw_bytes, source, SpecError)
    return parse_spec(data, source=source, sha256=sha256_hex(raw_bytes))


def sha256_hex(data: bytes) -> str:
    """The sha256 of ``data`` in hex, by CPython's own sha256 when it has one.

    hashlib would give the same digest, but importing it loads OpenSSL, which
    costs ``aif render`` about a tenth of importing click; hashlib falls back
    to this same module when OpenSSL lacks sha256.
    """
    return str(_sha256()(data).hexdigest())


@functools.cache  # found once: a failed import costs a search of sys.path
def _sha256() -> Any:
    for name in ("_sha2", "_sha256"):  # Python 3.12+, 3.11
        try:
            return importlib.import_module(name).sha256
        except ImportError:
            continue
    import hashlib  # an interpreter built without it

    return hashlib.sha256


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the spec: {exc.strerror or exc}") from None


def parse_spec(data: dict[str, object], *, source: str, sha256: str = "") -> JobSpec:
    top = Table(
        data,
        source=source,
        path="",
        error=SpecError,
        allowed=("spec_version", "job", "resources", "environment", "data", "placement", "array"),
    )
    top.integer("spec_version", SPEC_VERSION, minimum=SPEC_VERSION, maximum=SPEC_VERSION)
    if not top.has("job"):
        top.fail("job", "is required: a [job] table with at least name and command (or script)")
    job = _parse_job(top.table("job", ("name", "sector", "command", "script", "workdir")))
    resources = _parse_resources(
        top.table(
            "resources",
            (
                "nodes",
                "tasks_per_node",
                "gpus_per_node",
                "cpus_per_task",
                "memory_per_node",
                "walltime",
                "gpu_model",
            ),
        )
    )
    environment = _parse_environment(top.table("environment", ("container", "modules", "variables")))
    data_section = _parse_data(top.table("data", ("inputs", "sensitivity", "outputs")))
    placement = _parse_placement(top.table("placement", ("site", "exclude", "countries")))
    array = _parse_array(top.table("array", ("size", "parallel"))) if top.has("array") else None
    return JobSpec(
        job=job,
        resources=resources,
        environment=environment,
        data=data_section,
        placement=placement,
        array=array,
        source=source,
        sha256=sha256,
    )


def _parse_job(t: Table) -> JobSection:
    name = t.string("name", pattern=NAME_PATTERN, allowed=NAME_ALLOWED)
    sector = t.optional_string(
        "sector", pattern=SECTOR_PATTERN, allowed="expected a sector name such as 'health'"
    )
    command: tuple[str, ...] | None = None
    script: str | None = None
    if t.has("command") and t.has("script"):
        t.fail("command", "give exactly one of command (an argv list) or script (a bash body), not both")
    if t.has("command"):
        command = t.string_list("command", non_empty=True, max_items=MAX_ARGUMENTS)
        if command[0] == "":
            t.bad_value("command[0]", command[0], "the program name must not be empty")
        for index, argument in enumerate(command):
            t.check_bytes(f"command[{index}]", argument, ARGUMENT_MAX_BYTES)
        t.check_bytes("command", "\0".join(command), SCRIPT_MAX_BYTES)
    elif t.has("script"):
        script = t.string("script")
        if not script.strip():
            t.bad_value("script", script, "the script must not be empty")
        t.check_bytes("script", script, SCRIPT_MAX_BYTES)
    else:
        t.fail("command", "is required: give command (an argv list) or script (a bash body)")
    workdir = t.string("workdir", DEFAULT_WORKDIR, max_length=PATH_MAX_LENGTH)
    _check_workdir(t, workdir, name)
    return JobSection(name=name, sector=sector, command=command, script=script, workdir=workdir)


def _check_workdir(t: Table, template: str, name: str) -> None:
    for placeholder in re.findall(r"\{([^}]*)\}", template):
        if placeholder not in WORKDIR_PLACEHOLDERS:
            t.bad_value("workdir", template, "the only placeholders are {name} and {id}")
    filled = template.replace("{name}", "n").replace("{id}", "i")
    if not is_safe_relative_path(filled):
        t.bad_value("workdir", template, RELPATH_ALLOWED + " (placeholders {name} and {id} allowed)")
    longest = template.replace("{name}", name).replace("{id}", LONGEST_JOB_ID)
    if len(longest) > PATH_MAX_LENGTH:
        t.bad_value(
            "workdir",
            template,
            f"with this job's name and id it is {len(longest)} characters long; "
            f"at most {PATH_MAX_LENGTH} allowed",
        )
    _check_path_parts(t, "workdir", template, longest)


def _check_path_parts(t: Table, key: str, value: str, path: str) -> None:
    if any(len(part) > PATH_PART_MAX_LENGTH for part in path.split("/")):
        t.bad_value(key, value, f"at most {PATH_PART_MAX_LENGTH} characters between slashes")


def is_safe_relative_path(text: str) -> bool:
    if not re.fullmatch(RELPATH_PATTERN, text) or text.startswith("/"):
        return False
    return all(part not in ("..",) for part in text.split("/"))


def _parse_resources(t: Table) -> Resources:
    nodes = t.integer("nodes", 1, minimum=1, maximum=100_000)
    tasks = t.integer("tasks_per_node", 1, minimum=1, maximum=4096)
    gpus = t.integer("gpus_per_node", 0, minimum=0, maximum=64)
    cpus = t.optional_integer("cpus_per_task", minimum=1, maximum=4096)
    memory = read_size(t, "memory_per_node")
    walltime, seconds = read_walltime(t, "walltime", DEFAULT_WALLTIME)
    gpu_model = t.optional_string("gpu_model", pattern=IDENT_PATTERN, allowed=IDENT_ALLOWED)
    if gpu_model is not None and gpus == 0:
        t.bad_value("gpu_model", gpu_model, "a GPU model needs gpus_per_node of 1 or more")
    return Resources(
        nodes=nodes,
        tasks_per_node=tasks,
        gpus_per_node=gpus,
        cpus_per_task=cpus,
        memory_per_node=memory[0] if memory else None,
        memory_per_node_mb=memory[1] if memory else None,
        walltime=walltime,
        walltime_seconds=seconds,
        gpu_model=gpu_model,
    )


def _parse_environment(t: Table) -> Environment:
    container = t.optional_string(
        "container",
        pattern=CONTAINER_PATTERN,
        allowed="expected an image reference without spaces, e.g. docker://nvcr.io/nvidia/pytorch:24.05-py3",
    )
    modules = t.string_list(
        "modules",
        (),
        pattern=CONTAINER_PATTERN,
        allowed="expected a module name without spaces",
        max_items=MAX_LIST_ITEMS,
    )
    variables = t.string_map(
        "variables", key_pattern=VARIABLE_PATTERN, key_allowed=VARIABLE_ALLOWED, max_items=MAX_VARIABLES
    )
    for name, value in variables:
        if name.startswith(("SLURM_", "AIF_")):
            t.bad_value(
                f"variables.{name}", name, "names starting with SLURM_ or AIF_ are set by Slurm and aif"
            )
        t.check_bytes(f"variables.{name}", value, ARGUMENT_MAX_BYTES)
    return Environment(container=container, modules=modules, variables=variables)


def _parse_data(t: Table) -> DataSection:
    inputs = t.string_list(
        "inputs",
        (),
        pattern=IDENT_PATTERN,
        allowed="expected dataset names: " + IDENT_ALLOWED,
        max_items=MAX_LIST_ITEMS,
    )
    sensitivity = t.string("sensitivity", "public", choices=SENSITIVITIES)
    outputs = t.string_list("outputs", (), max_items=MAX_LIST_ITEMS, max_length=PATH_MAX_LENGTH)
    for index, output in enumerate(outputs):
        if not is_safe_relative_path(output.rstrip("/") or "."):
            t.bad_value(f"outputs[{index}]", output, RELPATH_ALLOWED + " (relative to the job's workdir)")
        _check_path_parts(t, f"outputs[{index}]", output, output)
    return DataSection(inputs=inputs, sensitivity=sensitivity, outputs=outputs)


def _parse_placement(t: Table) -> PlacementSection:
    site = t.optional_string("site", pattern=SITE_PATTERN, allowed=SITE_ALLOWED)
    exclude = t.string_list(
        "exclude", (), pattern=SITE_PATTERN, allowed=SITE_ALLOWED, max_items=MAX_LIST_ITEMS
    )
    countries = t.string_list(
        "countries",
        (),
        pattern=COUNTRY_PATTERN,
        allowed="expected ISO 3166 country codes such as 'FI'",
        max_items=MAX_LIST_ITEMS,
    )
    if site is not None and site in exclude:
        t.bad_value("site", site, "this site is also in placement.exclude")
    return PlacementSection(site=site, exclude=exclude, countries=countries)


def _parse_array(t: Table) -> ArraySection:
    size = t.integer("size", minimum=1, maximum=100_000)
    parallel = t.optional_integer("parallel", minimum=1, maximum=size)
    return ArraySection(size=size, parallel=parallel)
