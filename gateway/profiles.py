"""Site profiles: what each AI Factory's batch system really accepts.

One TOML file per site. The shipped ones live in ``profiles/`` (installed
as ``gateway/_profiles``); ``$AIF_HOME/profiles/*.toml`` add to them or
override them by name. The schema is documented in ``profiles/README.md``.
A profile's frozen dataclasses are records (:mod:`gateway.record`). What the profiles say
together, and of a spec or the user's config, is :mod:`gateway.profile_rules`.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from gateway import profile_cache
from gateway.errors import ProfileError, UsageError
from gateway.home import aif_home_text
from gateway.pathtext import child_text, file_stem, path_text, toml_files
from gateway.record import Record
from gateway.spec import (
    COUNTRY_PATTERN,
    IDENT_ALLOWED,
    IDENT_PATTERN,
    PATH_MAX_LENGTH,
    SECTOR_PATTERN,
    SENSITIVITIES,
    SITE_ALLOWED,
    SITE_PATTERN,
)
from gateway.tomlcheck import (
    SIZE_ALLOWED,
    SIZE_PATTERN,
    Table,
    did_you_mean,
    load_toml_file,
    read_walltime,
    size_to_mb,
)

if TYPE_CHECKING:
    from pathlib import Path

PROFILE_SCHEMA_VERSION = 1
BATCH_SYSTEMS = ("slurm", "pbspro")
GPU_REQUEST_STYLES = ("gpus-per-node", "gres", "gres-typed", "gpus-per-node-typed")
ACCOUNTING_SOURCES = ("slurmdbd", "jobcomp")
AUTH_KINDS = ("ssh-key", "ssh-certificate", "ssh-key+otp", "password+otp")
# Partition and QOS names reach #SBATCH lines: no quoting is possible there.
SLURM_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
WORK_AREA_PATTERN = r"/[A-Za-z0-9._+/{}-]*"
MAX_SUBMIT_CONCURRENCY = 8  # [slurm] submit_concurrency: sbatch at a time at a site


class Partition(Record):
    """One partition of a site as its profile describes it; sizes also as numbers (MB, seconds)."""

    name: str
    gpus_per_node: int
    gpu_model: str
    cpus_per_node: int
    memory_per_node: str
    memory_per_node_mb: int
    max_walltime: str
    max_walltime_seconds: int
    max_nodes: int
    whole_node: bool
    qos: str


class QosRule(Record):
    """A ``[[qos]]`` rule: the QOS a partition's jobs of these node counts and walltimes are sent with."""

    name: str
    partition: str
    min_nodes: int
    max_nodes: int
    max_walltime: str
    max_walltime_seconds: int


class Dataset(Record):
    """A dataset in a site's catalogue: where it lies, how big, how sensitive."""

    name: str
    path: str
    size: str
    size_mb: int
    sensitivity: str


class SlurmRules(Record):
    """How a site's Slurm wants its jobs written (the profile's ``[slurm]``)."""

    gpu_request: str
    send_memory: bool
    cpus_per_gpu: int
    enforce_cpus_per_gpu: bool
    qos_required: bool
    accounting: str
    shebang: str
    work_area: str
    submit_concurrency: int  # sbatch run at a time by one submission at the site


class SiteEnvironment(Record):
    """What a site's batch scripts set up: shell lines, modules and containers."""

    setup: tuple[str, ...]
    module_command: str
    container_setup: tuple[str, ...]
    container_exec: tuple[str, ...]


class SiteProfile(Record):
    """One site's profile: who runs it, how to log in, its Slurm rules, partitions and datasets."""

    name: str
    factory: str
    system: str
    country: str
    operator: str
    sectors: tuple[str, ...]
    max_sensitivity: str
    batch_system: str
    host: str
    port: int
    auth: str
    access_notes: str
    account_required: bool
    account_pattern: str
    account_example: str
    slurm: SlurmRules
    partitions: tuple[Partition, ...]
    qos_rules: tuple[QosRule, ...]
    environment: SiteEnvironment
    datasets: tuple[Dataset, ...]
    references: tuple[str, ...]
    assumptions: tuple[str, ...]
    source: str

    def dataset(self, name: str) -> Dataset | None:
        return next((d for d in self.datasets if d.name == name), None)

    def accepts_sensitivity(self, sensitivity: str) -> bool:
        return SENSITIVITIES.index(sensitivity) <= SENSITIVITIES.index(self.max_sensitivity)


# What a profile is made of, by name: what the profile cache rebuilds a profile from.
PROFILE_RECORDS: dict[str, type[Record]] = {
    c.__name__: c for c in (Partition, QosRule, Dataset, SlurmRules, SiteEnvironment, SiteProfile)
}


# -- loading --------------------------------------------------------------------


def shipped_profiles_dir() -> Path:
    """The profiles that come with aif: inside an installed package, or the checkout's."""
    from pathlib import Path  # start-up reads the profiles through shipped_profiles_text

    return Path(shipped_profiles_text())


def shipped_profiles_text() -> str:
    """:func:`shipped_profiles_dir` as text."""
    package = os.path.dirname(os.path.realpath(__file__))
    installed = child_text(package, "_profiles")
    if os.path.isdir(installed):
        return installed
    return child_text(os.path.dirname(package), "profiles")


def user_profiles_dir(home: str | Path | None = None) -> str:
    return child_text(path_text(home) if home else aif_home_text(), "profiles")


def profile_files(home: str | Path | None = None) -> dict[str, str]:
    """Profile files by site name; the user's override the shipped ones."""
    files: dict[str, str] = {}
    for directory in (shipped_profiles_text(), user_profiles_dir(home)):
        for path in toml_files(directory):
            files[file_stem(path)] = path
    return files


class BrokenProfile(Record):
    """A profile file that does not load: its site is unusable, and no other site is affected."""

    name: str  # the site it would define: its file name
    path: str
    message: str  # its one-line error, naming the file and the key


class ProfileSet(Mapping[str, SiteProfile]):
    """The usable profiles by site name (a read-only mapping), and the broken ones beside them.

    Using a broken site by name (:func:`get_profile`) raises that profile's
    own error; everything else simply does not see it.

    Each file is read once, when first needed (or its profile taken from the
    profile cache, :mod:`gateway.profile_cache`): asking for one site
    (``profiles[name]``, ``name in profiles``, :meth:`broken_one`) reads that
    site's file alone, so ``aif render --site lumi`` reads one profile; going
    through the set (iterating, ``usable``, ``broken``) reads every file. The
    answers are those of reading every file at once: each file is usable or
    broken, whenever it is read.
    """

    def __init__(self, files: Mapping[str, str]) -> None:
        self.files: Mapping[str, str] = dict(files)  # site name -> its profile file (see profile_files)
        self._read: dict[str, SiteProfile | BrokenProfile] = {}
        # The federation asks for sites from several threads: each file is still read once.
        self._lock = threading.Lock()

    def _one(self, name: str) -> SiteProfile | BrokenProfile | None:
        """Site ``name``'s profile or why it is broken (its file read now if not yet); None: no file."""
        path = self.files.get(name)
        if path is None:
            return None
        with self._lock:
            if name not in self._read:
                self._read[name] = _read_profile(name, path)
            return self._read[name]

    @property
    def usable(self) -> dict[str, SiteProfile]:
        """Every usable profile by site name, in the order of :func:`profile_files`."""
        return {name: p for name in self.files if isinstance(p := self._one(name), SiteProfile)}

    @property
    def broken(self) -> dict[str, BrokenProfile]:
        """Every broken profile by site name, in the order of :func:`profile_files`."""
        return {name: p for name in self.files if isinstance(p := self._one(name), BrokenProfile)}

    def broken_one(self, name: str) -> BrokenProfile | None:
        """Why site ``name``'s profile is broken; None when it is usable or has no file."""
        found = self._one(name)
        return found if isinstance(found, BrokenProfile) else None

    def __getitem__(self, name: str) -> SiteProfile:
        found = self._one(name)
        if not isinstance(found, SiteProfile):
            raise KeyError(name)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self.usable)

    def __len__(self) -> int:
        return len(self.usable)

    def __repr__(self) -> str:
        return f"ProfileSet(usable={self.usable!r}, broken={self.broken!r})"


def _read_profile(name: str, path: str) -> SiteProfile | BrokenProfile:
    """Site ``name``'s profile from ``path`` as it was last read, if the file is unchanged
    (:mod:`gateway.profile_cache`); else read now, and kept when usable."""
    cached = profile_cache.cached_profile(name, path, PROFILE_RECORDS)
    if isinstance(cached, SiteProfile) and cached.source == path:
        return cached
    try:
        before = profile_cache.file_key(path)
    except OSError:
        before = None  # load_profile says why it cannot be read
    try:
        profile = load_profile(path)
    except ProfileError as exc:
        return BrokenProfile(name=name, path=path, message=exc.message)
    if before is not None:
        profile_cache.keep_profile(name, path, before, profile)
    return profile


def load_profiles(home: str | Path | None = None) -> ProfileSet:
    """Every profile, shipped and the user's; one that does not load is set aside as broken.

    A user's file overrides the shipped one of the same name even when it is
    broken: that site is then unusable rather than silently the shipped one.
    The files are read when their sites are first asked for (:class:`ProfileSet`).
    """
    return ProfileSet(profile_files(home))


def known_site_names(profiles: Mapping[str, SiteProfile]) -> list[str]:
    """Every site name a profile file gives, usable or broken, sorted."""
    if isinstance(profiles, ProfileSet):
        return sorted(profiles.files)  # each file is a usable profile or a broken one: none is read
    return sorted(profiles)


def load_profile(path: str | Path) -> SiteProfile:
    source = path_text(path)  # as str(Path(path)) names it
    profile = parse_profile(load_toml_file(source, ProfileError), source=source)
    stem = file_stem(source)
    if profile.name != stem:
        raise ProfileError(
            f"{source}: site.name: {profile.name!r} is not allowed; it must equal the file name {stem!r}"
        )
    return profile


def get_profile(profiles: Mapping[str, SiteProfile], name: str) -> SiteProfile:
    """The profile of site ``name``; a broken one raises its own error (exit 3)."""
    if name in profiles:
        return profiles[name]
    broken = profiles.broken_one(name) if isinstance(profiles, ProfileSet) else None
    if broken is not None:
        raise ProfileError(broken.message)
    known = known_site_names(profiles)
    maybe = did_you_mean(name, known)
    raise UsageError(f"unknown site {name!r}; {maybe}known sites: {', '.join(known)}")


# -- parsing --------------------------------------------------------------------


def parse_profile(data: dict[str, object], *, source: str) -> SiteProfile:
    top = Table(
        data,
        source=source,
        path="",
        error=ProfileError,
        allowed=(
            "schema_version",
            "site",
            "access",
            "account",
            "slurm",
            "partitions",
            "qos",
            "environment",
            "datasets",
            "sources",
        ),
    )
    top.integer("schema_version", minimum=PROFILE_SCHEMA_VERSION, maximum=PROFILE_SCHEMA_VERSION)
    site = top.table(
        "site",
        ("name", "factory", "system", "country", "operator", "sectors", "max_sensitivity", "batch_system"),
        required=True,
    )
    name = site.string("name", pattern=SITE_PATTERN, allowed=SITE_ALLOWED)
    country = site.string(
        "country", pattern=COUNTRY_PATTERN + "|XX", allowed="expected an ISO 3166 alpha-2 code"
    )
    access = top.table("access", ("host", "port", "auth", "notes"), required=True)
    account = top.table("account", ("required", "pattern", "example"))
    account_pattern = account.string("pattern", ".*")
    try:
        re.compile(account_pattern)
    except (re.error, OverflowError, RecursionError) as exc:  # OverflowError: a{4294967296}
        account.bad_value("pattern", account_pattern, f"not a valid regular expression ({exc})")
    slurm = _parse_slurm(top.table("slurm", SLURM_KEYS))
    partitions = tuple(_parse_partition(t) for t in top.tables("partitions", PARTITION_KEYS))
    batch_system = site.string("batch_system", "slurm", choices=BATCH_SYSTEMS)
    if batch_system == "slurm" and not partitions:
        top.fail("partitions", "a Slurm site needs at least one [[partitions]] entry")
    _refuse_duplicates(top, "partitions", [p.name for p in partitions])
    qos_rules = tuple(_parse_qos(t, {p.name for p in partitions}) for t in top.tables("qos", QOS_KEYS))
    environment = top.table("environment", ("setup", "module_command", "container_setup", "container_exec"))
    datasets = tuple(_parse_dataset(t) for t in top.tables("datasets", DATASET_KEYS))
    _refuse_duplicates(top, "datasets", [d.name for d in datasets])
    sources = top.table("sources", ("references", "assumptions"))
    return SiteProfile(
        name=name,
        factory=site.string("factory"),
        system=site.string("system"),
        country=country,
        operator=site.string("operator", ""),
        sectors=site.string_list(
            "sectors", pattern=SECTOR_PATTERN, allowed="expected lowercase sector names such as 'health'"
        ),
        max_sensitivity=site.string("max_sensitivity", choices=SENSITIVITIES),
        batch_system=batch_system,
        host=access.string("host", pattern=r"[A-Za-z0-9][A-Za-z0-9.-]*", allowed="expected a host name"),
        port=access.integer("port", 22, minimum=1, maximum=65535),
        auth=access.string("auth", "ssh-key", choices=AUTH_KINDS),
        access_notes=access.string("notes", ""),
        account_required=account.boolean("required", False),
        account_pattern=account_pattern,
        account_example=account.string("example", ""),
        slurm=slurm,
        partitions=partitions,
        qos_rules=qos_rules,
        environment=SiteEnvironment(
            setup=environment.string_list("setup", ()),
            module_command=environment.string("module_command", ""),
            container_setup=environment.string_list("container_setup", ()),
            container_exec=environment.string_list("container_exec", ()),
        ),
        datasets=datasets,
        references=sources.string_list("references", ()),
        assumptions=sources.string_list("assumptions", ()),
        source=source,
    )


SLURM_KEYS = (
    "gpu_request",
    "send_memory",
    "cpus_per_gpu",
    "enforce_cpus_per_gpu",
    "qos_required",
    "accounting",
    "shebang",
    "work_area",
    "submit_concurrency",
)
PARTITION_KEYS = (
    "name",
    "gpus_per_node",
    "gpu_model",
    "cpus_per_node",
    "memory_per_node",
    "max_walltime",
    "max_nodes",
    "whole_node",
    "qos",
)
QOS_KEYS = ("name", "partition", "min_nodes", "max_nodes", "max_walltime")
DATASET_KEYS = ("name", "path", "size", "sensitivity")


def _parse_slurm(t: Table) -> SlurmRules:
    shebang = t.string("shebang", "#!/bin/bash", pattern=r"#!/[^\n]*", allowed="expected a #! line")
    return SlurmRules(
        gpu_request=t.string("gpu_request", "gpus-per-node", choices=GPU_REQUEST_STYLES),
        send_memory=t.boolean("send_memory", True),
        cpus_per_gpu=t.integer("cpus_per_gpu", 0, minimum=0, maximum=1024),
        enforce_cpus_per_gpu=t.boolean("enforce_cpus_per_gpu", False),
        qos_required=t.boolean("qos_required", False),
        accounting=t.string("accounting", "slurmdbd", choices=ACCOUNTING_SOURCES),
        shebang=shebang,
        work_area=t.string(
            "work_area",
            "/home/{user}/aif",
            pattern=WORK_AREA_PATTERN,
            allowed="expected an absolute path; {user}, {account} and {site} are filled in",
            max_length=PATH_MAX_LENGTH,
        ),
        submit_concurrency=t.integer("submit_concurrency", 2, minimum=1, maximum=MAX_SUBMIT_CONCURRENCY),
    )


def _parse_partition(t: Table) -> Partition:
    memory = t.string("memory_per_node", pattern=SIZE_PATTERN, allowed=SIZE_ALLOWED)
    walltime, seconds = read_walltime(t, "max_walltime")
    gpus = t.integer("gpus_per_node", 0, minimum=0, maximum=64)
    return Partition(
        name=t.string("name", pattern=SLURM_NAME_PATTERN, allowed="expected a Slurm partition name"),
        gpus_per_node=gpus,
        gpu_model=t.string("gpu_model", "", pattern=IDENT_PATTERN + "|", allowed=IDENT_ALLOWED),
        cpus_per_node=t.integer("cpus_per_node", minimum=1, maximum=4096),
        memory_per_node=memory,
        memory_per_node_mb=size_to_mb(memory),
        max_walltime=walltime,
        max_walltime_seconds=seconds,
        max_nodes=t.integer("max_nodes", minimum=1, maximum=100_000),
        whole_node=t.boolean("whole_node", False),
        qos=t.string("qos", "", pattern=SLURM_NAME_PATTERN + "|", allowed="expected a QOS name"),
    )


def _parse_qos(t: Table, partitions: set[str]) -> QosRule:
    partition = t.string("partition", pattern=SLURM_NAME_PATTERN, allowed="expected a partition name")
    if partition not in partitions:
        t.bad_value(
            "partition", partition, f"expected one of this profile's partitions: {sorted(partitions)}"
        )
    walltime, seconds = read_walltime(t, "max_walltime")
    min_nodes = t.integer("min_nodes", 1, minimum=1, maximum=100_000)
    return QosRule(
        name=t.string("name", pattern=SLURM_NAME_PATTERN, allowed="expected a QOS name"),
        partition=partition,
        min_nodes=min_nodes,
        max_nodes=t.integer("max_nodes", minimum=min_nodes, maximum=100_000),
        max_walltime=walltime,
        max_walltime_seconds=seconds,
    )


def _parse_dataset(t: Table) -> Dataset:
    size = t.string("size", pattern=SIZE_PATTERN, allowed=SIZE_ALLOWED)
    return Dataset(
        name=t.string("name", pattern=IDENT_PATTERN, allowed=IDENT_ALLOWED),
        path=t.string(
            "path", pattern=WORK_AREA_PATTERN, allowed="expected an absolute path", max_length=PATH_MAX_LENGTH
        ),
        size=size,
        size_mb=size_to_mb(size),
        sensitivity=t.string("sensitivity", "public", choices=SENSITIVITIES),
    )


def _refuse_duplicates(t: Table, key: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            t.bad_value(key, name, "names must be unique")
        seen.add(name)
