"""Where a site is and how to log in: ``SshTarget``, resolved through ``~/.ssh/config``.

``resolve_route`` applies the user's ssh config (its Include directives
expanded, which paramiko ignores) to an ``SshTarget`` and gives the servers to
log in to, jump hosts first, as ``ResolvedEndpoint`` values. HostName, User,
Port, IdentityFile, IdentitiesOnly, ProxyJump, ProxyCommand and
UserKnownHostsFile are honoured; values set in the target win over the config.
``_one_line`` words an exception the way every module of this package puts it
in its messages.
"""

from __future__ import annotations

import getpass
import glob
import os
import re
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

import paramiko

from gateway.errors import ConfigError
from gateway.record import Record
from gateway.transports.ssh.paramiko_import import MATCH_EXEC, give_paramiko_invoke

DEFAULT_PORT = 22
DEFAULT_CONNECT_TIMEOUT = 15.0
DEFAULT_IDENTITY_NAMES = ("id_ed25519", "id_rsa", "id_ecdsa")
GLOBAL_KNOWN_HOSTS = (Path("/etc/ssh/ssh_known_hosts"), Path("/etc/ssh/ssh_known_hosts2"))
# A bound on jump hosts, so a ProxyJump loop in ssh config fails fast.
_MAX_JUMP_DEPTH = 8
# OpenSSH's own limit on nested Include directives.
_MAX_INCLUDE_DEPTH = 16
_INCLUDE_LINE = re.compile(r"^\s*include(?:\s*=\s*|\s+)(.+)$", re.IGNORECASE)


class SshTarget(Record):
    """Where one site's login node is and how to log in.

    ``None`` means "not set here": ``~/.ssh/config`` (when ``use_ssh_config``)
    or the OpenSSH default applies. Values set here win over the config.
    """

    site: str
    host: str
    port: int | None = None
    user: str | None = None
    identity_file: Path | None = None
    # None: ~/.ssh/known_hosts (or the config's UserKnownHostsFile) plus the
    # global /etc/ssh files. A path: that file only.
    known_hosts: Path | None = None
    # "[user@]host[:port]" hops, comma-separated, like ssh -J; "none" disables
    # a ProxyJump from the config.
    proxy_jump: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    use_ssh_config: bool = True
    ssh_config_path: Path | None = None  # None: ~/.ssh/config
    # False is like IdentitiesOnly=yes: only key files are offered.
    use_agent: bool = True

    def __post_init__(self) -> None:
        # Callers building targets from TOML hand over strings; normalise so
        # equal targets compare (and cache) equal.
        for name in ("identity_file", "known_hosts", "ssh_config_path"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Path(value))


class ResolvedEndpoint(Record):
    """One SSH server to log in to, after ~/.ssh/config has been applied."""

    name: str  # as written by the user (alias or jump spec), for messages
    hostname: str
    port: int
    user: str
    identity_files: tuple[Path, ...]
    # Whether identity_files were asked for (missing ones are then reported)
    # rather than OpenSSH's defaults (missing ones are normal).
    identity_files_explicit: bool
    known_hosts_files: tuple[Path, ...]
    use_agent: bool
    proxy_command: str | None = None

    @property
    def address(self) -> str:
        """host:port as people write it."""
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The name OpenSSH files this server's key under in known_hosts."""
        if self.port == DEFAULT_PORT:
            return self.hostname
        return f"[{self.hostname}]:{self.port}"


# -- resolving ~/.ssh/config --------------------------------------------------


def _ssh_dir() -> Path:
    return Path.home() / ".ssh"


def _load_ssh_config(target: SshTarget) -> paramiko.SSHConfig | None:
    if not target.use_ssh_config:
        return None
    path = target.ssh_config_path or _ssh_dir() / "config"
    if not path.is_file():
        return None
    try:
        text = _config_text(path, 0)
        if MATCH_EXEC.search(text):
            give_paramiko_invoke()
        return paramiko.SSHConfig.from_text(text)
    except (OSError, paramiko.SSHException) as exc:
        raise ConfigError(f"cannot read ssh config {path}: {_one_line(exc)}") from None


def _config_text(path: Path, depth: int) -> str:
    """The config file with its Include directives expanded in place.

    paramiko ignores Include, yet tools such as smallstep's ``step ssh
    config`` (used for certificate logins) put their hosts in included files.
    """
    if depth > _MAX_INCLUDE_DEPTH:
        raise ConfigError(f"ssh config Include nested more than {_MAX_INCLUDE_DEPTH} deep at {path}")
    lines: list[str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        include = _INCLUDE_LINE.match(line)
        if include is None:
            lines.append(line)
            continue
        for pattern in shlex.split(include.group(1), comments=True):
            expanded = os.path.expanduser(pattern)
            if not os.path.isabs(expanded):
                expanded = str(_ssh_dir() / expanded)  # as OpenSSH does for user configs
            for included in sorted(glob.glob(expanded)):
                if os.path.isfile(included):
                    lines.append(_config_text(Path(included), depth + 1))
    return "\n".join(lines)


def _lookup(config: paramiko.SSHConfig | None, host: str) -> dict[str, Any]:
    if config is None:
        return {}
    try:
        return dict(config.lookup(host))
    except Exception as exc:  # paramiko raises plain errors for e.g. Match exec
        raise ConfigError(f"cannot apply ssh config to host {host}: {_one_line(exc)}") from None


def _parse_jump(spec: str) -> tuple[str | None, str, int | None]:
    """'[user@]host[:port]' (or ssh://...) as (user, host, port)."""
    text = spec.strip()
    if text.startswith("ssh://"):
        text = text[len("ssh://") :]
    user: str | None = None
    if "@" in text:
        user, text = text.rsplit("@", 1)
    port_text: str | None = None
    if text.startswith("["):  # [ipv6]:port
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host = text
    if not host:
        raise ConfigError(f"invalid ProxyJump hop {spec!r}: no host")
    port = None
    if port_text:
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError(f"invalid ProxyJump hop {spec!r}: bad port") from None
    return user or None, host, port


def _split_jumps(value: str | None) -> list[str]:
    if not value or value.strip().lower() == "none":
        return []
    return [hop for hop in (part.strip() for part in value.split(",")) if hop]


def _config_port(options: dict[str, Any], host: str) -> int | None:
    if "port" not in options:
        return None
    try:
        return int(options["port"])
    except ValueError:
        raise ConfigError(f"ssh config gives host {host} a bad Port {options['port']!r}") from None


def _known_hosts_files(target: SshTarget, options: dict[str, Any]) -> tuple[Path, ...]:
    if target.known_hosts is not None:
        return (target.known_hosts,)
    user_files = _path_list(options.get("userknownhostsfile"))
    if user_files is None:
        user_files = [_ssh_dir() / "known_hosts"]
    global_files = _path_list(options.get("globalknownhostsfile"))
    if global_files is None:
        global_files = list(GLOBAL_KNOWN_HOSTS)
    return tuple(user_files + global_files)


def _path_list(value: str | None) -> list[Path] | None:
    """A config list of files ("none" is an empty list, unset is None)."""
    if value is None:
        return None
    if value.strip().lower() == "none":
        return []
    return [Path(os.path.expanduser(part)) for part in shlex.split(value)]


def _endpoint(
    target: SshTarget,
    config: paramiko.SSHConfig | None,
    name: str,
    user: str | None,
    port: int | None,
    identity_file: Path | None,
) -> tuple[ResolvedEndpoint, dict[str, Any]]:
    options = _lookup(config, name)
    identity_files: tuple[Path, ...]
    if identity_file is not None:
        identity_files, explicit = (identity_file.expanduser(),), True
    elif options.get("identityfile"):
        identity_files = tuple(Path(os.path.expanduser(p)) for p in options["identityfile"])
        explicit = True
    else:
        # OpenSSH tries its default key files only when none is configured.
        identity_files = tuple(_ssh_dir() / key_name for key_name in DEFAULT_IDENTITY_NAMES)
        explicit = False
    identities_only = str(options.get("identitiesonly", "no")).lower() == "yes"
    endpoint = ResolvedEndpoint(
        name=name,
        hostname=str(options.get("hostname", name)),
        port=port or _config_port(options, name) or DEFAULT_PORT,
        user=user or options.get("user") or getpass.getuser(),
        identity_files=identity_files,
        identity_files_explicit=explicit,
        known_hosts_files=_known_hosts_files(target, options),
        use_agent=target.use_agent and not identities_only,
        proxy_command=_proxy_command(options),
    )
    return endpoint, options


def _proxy_command(options: dict[str, Any]) -> str | None:
    command = options.get("proxycommand")
    if not command or str(command).strip().lower() == "none":
        return None
    return str(command)


def resolve_route(target: SshTarget) -> tuple[ResolvedEndpoint, ...]:
    """The servers to log in to, in order: jump hosts first, the site last."""
    config = _load_ssh_config(target)
    final, options = _endpoint(target, config, target.host, target.user, target.port, target.identity_file)
    jumps = _split_jumps(target.proxy_jump if target.proxy_jump is not None else options.get("proxyjump"))
    route: list[ResolvedEndpoint] = []
    # Like ssh -J a,b: b is reached through a, and a through whatever its own
    # config says (its own ProxyJump), so only the first hop recurses.
    pending = jumps
    hop_count = 0
    while pending:
        hop_count += len(pending)
        if hop_count > _MAX_JUMP_DEPTH:
            raise ConfigError(
                f"site {target.site}: more than {_MAX_JUMP_DEPTH} ProxyJump hops (a loop in ssh config?)"
            )
        hops: list[ResolvedEndpoint] = []
        first_hop_options: dict[str, Any] = {}
        for spec in pending:
            user, host, port = _parse_jump(spec)
            hop, hop_options = _endpoint(target, config, host, user, port, None)
            if not hop_options.get("identityfile") and target.identity_file is not None:
                # A jump host without a key of its own in the config gets the
                # site's key: gateways usually accept the same one.
                hop = replace(
                    hop,
                    identity_files=(target.identity_file.expanduser(),),
                    identity_files_explicit=True,
                )
            if not hops:
                first_hop_options = hop_options
            hops.append(hop)
        route = hops + route
        pending = _split_jumps(first_hop_options.get("proxyjump"))
        if pending:
            route[0] = replace(route[0], proxy_command=None)
    full = [*route, final]
    # Only the first server is reached by a socket of our own; ProxyCommand
    # means nothing for servers reached through a jump host's channel.
    return (full[0], *(replace(endpoint, proxy_command=None) for endpoint in full[1:]))


# -- errors in one line ---------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, paramiko.ChannelException):
        return f"{exc.text} (channel open refused, code {exc.code})"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
