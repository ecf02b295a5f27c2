"""Host keys, checked strictly against known_hosts.

An unknown or changed key is refused (``HostKeyRejected``), never added
automatically; the message says how to check the key and fix the file that
holds the old one. known_hosts files are parsed here rather than by paramiko,
so an ``@cert-authority`` line does not hide a file's other entries and an
``@revoked`` key is refused.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeyEntry

from gateway.errors import HostKeyRejected
from gateway.transports.ssh.config import DEFAULT_PORT, ResolvedEndpoint, _one_line


def _fingerprint(key: paramiko.PKey) -> str:
    return f"{key.fingerprint} ({key.get_name()})"


class _RejectUnknownHostKey(paramiko.MissingHostKeyPolicy):
    """Refuse servers whose key is not in known_hosts: never trust on first use."""

    def __init__(self, site: str, endpoint: ResolvedEndpoint) -> None:
        self._site = site
        self._endpoint = endpoint

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        endpoint = self._endpoint
        files = ", ".join(str(path) for path in endpoint.known_hosts_files) or "none"
        destination = endpoint.known_hosts_files[0] if endpoint.known_hosts_files else "~/.ssh/known_hosts"
        port = "" if endpoint.port == DEFAULT_PORT else f"-p {endpoint.port} "
        raise HostKeyRejected(
            f"site {self._site}: host key for {hostname} is not in known_hosts ({files}); "
            f"its fingerprint is {_fingerprint(key)}: check it against the one the site "
            f"publishes, then add it with `ssh-keyscan {port}{endpoint.hostname} >> {destination}`"
        )


def _load_known_hosts(
    client: paramiko.SSHClient, site: str, endpoint: ResolvedEndpoint
) -> list[paramiko.PKey]:
    """Add every usable known_hosts entry to ``client``; returns @revoked keys.

    Parsed here rather than with paramiko's loader, which aborts a whole
    file on one ``@cert-authority`` line (common at sites that sign host
    keys) and ignores ``@revoked``. Lines it cannot use are skipped, as
    OpenSSH does; host certificates are not supported by paramiko.
    """
    host_keys = client.get_host_keys()
    revoked: list[paramiko.PKey] = []
    for path in endpoint.known_hosts_files:
        if not path.is_file():
            continue
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            raise HostKeyRejected(
                f"site {site}: cannot read known_hosts file {path}: {_one_line(exc)}"
            ) from None
        for raw_line in lines:
            line = raw_line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("@"):
                marker, _, rest = line.partition(" ")
                if marker == "@revoked":
                    entry = _known_hosts_entry(rest.strip())
                    if entry is not None:
                        revoked.append(entry.key)
                continue  # @cert-authority: host certificates are unsupported
            entry = _known_hosts_entry(line)
            if entry is None:
                continue
            for hostname in entry.hostnames:
                host_keys.add(hostname, entry.key.get_name(), entry.key)
    return revoked


def _known_hosts_entry(line: str) -> HostKeyEntry | None:
    try:
        return HostKeyEntry.from_line(line)
    except Exception:  # InvalidHostKey is not an SSHException; skip any bad line
        return None


def _changed_key_message(site: str, endpoint: ResolvedEndpoint, exc: paramiko.BadHostKeyException) -> str:
    name = endpoint.known_hosts_name
    files = _files_naming(endpoint.known_hosts_files, name) or list(endpoint.known_hosts_files)
    port = "" if endpoint.port == DEFAULT_PORT else f"-p {endpoint.port} "
    # The file must be named: `ssh-keygen -R` alone edits ~/.ssh/known_hosts only.
    remove = "; ".join(f"ssh-keygen -R {shlex.quote(name)} -f {shlex.quote(str(f))}" for f in files)
    add = f"ssh-keyscan {port}{endpoint.hostname} >> {shlex.quote(str(files[0]))}"
    return (
        f"site {site}: host key for {name} has CHANGED (possible man-in-the-middle attack): "
        f"the server now shows {_fingerprint(exc.key)}, known_hosts "
        f"({' '.join(str(f) for f in files)}) has {_fingerprint(exc.expected_key)}; "
        "do not connect until you have checked the new fingerprint against the ones the site "
        "publishes (its documentation or support desk, not this server); if it matches, replace "
        f"the old key: `{remove}` then `{add}`"
    )


def _files_naming(paths: Sequence[Path], name: str) -> list[Path]:
    """The known_hosts files with an entry for ``name`` (hashed entries included)."""
    found = []
    for path in paths:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            entry = None if line.lstrip().startswith(("#", "@")) else _known_hosts_entry(line.strip())
            if entry is not None and any(_names_host(pattern, name) for pattern in entry.hostnames):
                found.append(path)
                break
    return found


def _names_host(pattern: str, name: str) -> bool:
    if pattern.startswith("|1|"):  # hashed: `ssh-keygen -H`
        return paramiko.HostKeys.hash_host(name, pattern) == pattern
    return pattern == name
