"""The user's own configuration: accounts, login names and how to reach each site.

``$AIF_HOME/config.toml`` plus ``$AIF_HOME/config.d/*.toml`` (merged in name
order, later files win per site; the sandbox writes ``config.d/sandbox.toml``).
Accounts and login names are per user and never live in a profile. The
config's frozen dataclasses are records (:mod:`gateway.record`).
"""

from __future__ import annotations

import os
import re
from dataclasses import field, replace
from functools import cached_property
from typing import TYPE_CHECKING

from gateway.errors import ConfigError
from gateway.home import aif_home_text
from gateway.pathtext import child_text, path_text, toml_files
from gateway.record import Record
from gateway.spec import SITE_ALLOWED, SITE_PATTERN
from gateway.tomlcheck import Table, load_toml_file, show_key, show_value

if TYPE_CHECKING:
    from pathlib import Path

TRANSPORTS = ("ssh", "local", "pyslurm")
# Accounts reach an #SBATCH line: keep them to characters that need no quoting.
ACCOUNT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
USER_PATTERN = r"[a-z_][a-z0-9_.-]{0,31}\$?"
HOST_PATTERN = r"[A-Za-z0-9][A-Za-z0-9.:_-]{0,252}"
SITE_KEYS = (
    "account",
    "user",
    "identity_file",
    "known_hosts",
    "host",
    "port",
    "proxy_jump",
    "transport",
    "slurm_conf",
    "share_connection",
)


class SiteAccess(Record):
    """What this user needs to reach one site."""

    account: str | None = None
    user: str | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    host: str | None = None
    port: int | None = None
    proxy_jump: str | None = None
    transport: str = "ssh"
    slurm_conf: str | None = None
    # One SSH connection shared by every aif process (gateway.transports.mux); None: as [ssh] says.
    share_connection: bool | None = None
    persist_s: int = 60  # how long an idle shared connection stays (from [ssh])
    # Set where profiles and config meet (this layer knows no site names): e.g. that
    # a [sites.*] entry naming no known site was probably meant for this one.
    hint: str = ""


class PlacementWeights(Record):
    """How the federation weighs a site, in seconds of waiting (``[federation]`` in the config).

    ``snapshot_ttl_s``: how long a probe of a site's load is reused (by every
    aif process). ``sector_bonus_s``: what a factory focused on the job's
    sector is worth, as seconds of waiting it may outweigh. ``queue_round_s``:
    a queue as deep as the partition is large counts as this many seconds (0:
    the job's own walltime). ``data_s_per_missing_input``: the cost of
    an input a site does not hold (0 today: such sites are not eligible; kept
    so data movement can join the score).
    """

    snapshot_ttl_s: int = 30
    sector_bonus_s: int = 600
    queue_round_s: int = 0
    data_s_per_missing_input: int = 0


FEDERATION_KEYS = ("snapshot_ttl_s", "sector_bonus_s", "queue_round_s", "data_s_per_missing_input")
TOP_KEYS = ("sites", "federation", "ssh")


class SshSharing(Record):
    """``[ssh]``: share one connection per site between aif processes (like ControlMaster),
    kept ``persist_s`` seconds after its last command (like ControlPersist)."""

    share_connection: bool = False
    persist_s: int = 60


SSH_KEYS = ("share_connection", "persist_s")


class UserConfig(Record):
    """The user's config: access per site, the files it came from, the federation's weights."""

    sites: dict[str, SiteAccess] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)  # site entry -> the file that set it last
    weights: PlacementWeights = field(default_factory=PlacementWeights)
    ssh: SshSharing = field(default_factory=SshSharing)

    def access(self, site: str) -> SiteAccess:
        known = self._accesses.get(site)
        if known is None:
            access = self.sites.get(site, SiteAccess())
            share = self.ssh.share_connection if access.share_connection is None else access.share_connection
            known = replace(access, share_connection=share, persist_s=self.ssh.persist_s)
            self._accesses[site] = known
        return known

    @cached_property
    def _accesses(self) -> dict[str, SiteAccess]:
        # Asked once per job and more (a few hundred specs: a few hundred copies otherwise);
        # the config never changes, so each site's answer is kept (cached_property writes
        # the instance's dict directly: the record's fields stay as they are).
        return {}


def config_files(home: str | Path | None = None) -> list[str]:
    """The config files that exist, in the order they apply (see the module's docstring)."""
    directory = path_text(home) if home else aif_home_text()
    main = child_text(directory, "config.toml")
    files = [main] if os.path.isfile(main) else []
    files.extend(p for p in toml_files(child_text(directory, "config.d")) if os.path.isfile(p))
    return files


def load_config(home: str | Path | None = None) -> UserConfig:
    sites: dict[str, SiteAccess] = {}
    sources: dict[str, str] = {}
    weights: dict[str, int] = {}
    sharing: dict[str, object] = {}
    files = config_files(home)
    for path in files:
        data = load_toml_file(path, ConfigError)
        parsed = parse_config(data, source=path)
        sites.update(parsed)
        sources.update(dict.fromkeys(parsed, path))
        weights.update(parse_weights(data, source=path))
        sharing.update(parse_ssh(data, source=path))
    return UserConfig(
        sites=sites,
        files=tuple(files),
        sources=sources,
        weights=PlacementWeights(**weights),
        ssh=SshSharing(**sharing),  # type: ignore[arg-type]  # parse_ssh typed each value
    )


def parse_ssh(data: dict[str, object], *, source: str) -> dict[str, object]:
    """The ``[ssh]`` keys a file sets (later files win key by key)."""
    if "ssh" not in data:
        return {}
    top = Table(data, source=source, path="", error=ConfigError, allowed=TOP_KEYS)
    t = top.table("ssh", SSH_KEYS)
    raw = data["ssh"]
    assert isinstance(raw, dict)  # top.table checked it
    values: dict[str, object] = {}
    if "share_connection" in raw:
        values["share_connection"] = t.boolean("share_connection")
    if "persist_s" in raw:
        values["persist_s"] = t.integer("persist_s", minimum=1, maximum=86400)
    return values


def parse_weights(data: dict[str, object], *, source: str) -> dict[str, int]:
    """The ``[federation]`` keys a file sets (later files win key by key)."""
    if "federation" not in data:
        return {}
    top = Table(data, source=source, path="", error=ConfigError, allowed=TOP_KEYS)
    t = top.table("federation", FEDERATION_KEYS)
    raw = data["federation"]
    assert isinstance(raw, dict)  # top.table checked it
    return {key: t.integer(key, minimum=0, maximum=10**7) for key in FEDERATION_KEYS if key in raw}


def parse_config(data: dict[str, object], *, source: str) -> dict[str, SiteAccess]:
    top = Table(data, source=source, path="", error=ConfigError, allowed=TOP_KEYS)
    raw_sites = data.get("sites", {})
    if not isinstance(raw_sites, dict):
        top.fail("sites", "expected tables like [sites.lumi]")
    # Site names are the keys here: each is checked as a name, not against a fixed list.
    sites_table = top.table("sites", tuple(raw_sites))
    result: dict[str, SiteAccess] = {}
    for name in raw_sites:
        if not isinstance(name, str) or not _matches(SITE_PATTERN, name):
            sites_table.fail(show_key(name), f"{show_value(name)} is not a site name; {SITE_ALLOWED}")
        # Each site's table is read on its own so that unknown keys name the site.
        t = Table(
            _as_table(sites_table, name, raw_sites[name]),
            source=source,
            path=f"sites.{name}",
            error=ConfigError,
            allowed=SITE_KEYS,
        )
        result[name] = SiteAccess(
            account=t.optional_string(
                "account", pattern=ACCOUNT_PATTERN, allowed="expected letters, digits and . _ -"
            ),
            user=t.optional_string("user", pattern=USER_PATTERN, allowed="expected a login name"),
            identity_file=t.optional_string("identity_file"),
            known_hosts=t.optional_string("known_hosts"),
            host=t.optional_string("host", pattern=HOST_PATTERN, allowed="expected a host name or address"),
            port=t.optional_integer("port", minimum=1, maximum=65535),
            proxy_jump=t.optional_string("proxy_jump", pattern=r"[^\s]*", allowed="no spaces"),
            transport=t.string("transport", "ssh", choices=TRANSPORTS),
            slurm_conf=t.optional_string("slurm_conf"),
            share_connection=t.boolean("share_connection") if t.has("share_connection") else None,
        )
    return result


def _as_table(parent: Table, key: str, value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        parent.fail(key, f"expected a table [sites.{key}]")
    return value


def _matches(pattern: str, text: str) -> bool:
    return re.fullmatch(pattern, text) is not None
