"""Client keys: what aif offers a server. Public-key authentication only.

Key files first, each preceded by its OpenSSH user certificate
(``<key>-cert.pub``) when one is beside it (an expired one is reported, not
offered), then ssh-agent's keys. No passwords: a passphrase-protected key
file must be loaded into the agent. ``_OfferKeys`` makes paramiko offer
exactly these keys, in this order.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from paramiko.auth_strategy import AuthSource, AuthStrategy, InMemoryPrivateKey

from gateway.transports.ssh.config import ResolvedEndpoint, _one_line


@dataclass
class _Identities:
    """The keys to offer one server, and what to say about them if all fail."""

    keys: list[paramiko.PKey] = field(default_factory=list)
    tried: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    agent: paramiko.Agent | None = None

    def close(self) -> None:
        if self.agent is not None:
            self.agent.close()
            self.agent = None


def _read_private_key(path: Path) -> paramiko.PKey:
    last_error: Exception | None = None
    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return key_class.from_private_key_file(str(path))
        except paramiko.PasswordRequiredException:
            raise
        except (paramiko.SSHException, ValueError) as exc:
            last_error = exc  # not this key type; try the next
    raise paramiko.SSHException(f"not a supported private key ({last_error})")


def _certificate_expiry(cert_path: Path) -> dt.datetime | None:
    """When the OpenSSH certificate stops being valid, if that can be read."""
    try:
        certificate = serialization.load_ssh_public_identity(cert_path.read_bytes())
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    valid_before = getattr(certificate, "valid_before", None)
    if not isinstance(valid_before, int) or valid_before >= 2**63:
        return None  # "forever" certificates
    return dt.datetime.fromtimestamp(valid_before, tz=dt.timezone.utc)


def _identities(endpoint: ResolvedEndpoint) -> _Identities:
    found = _Identities()
    # Key files first: with many agent keys, offering those first can use up
    # the server's MaxAuthTries before the key meant for this site.
    for path in endpoint.identity_files:
        if not path.is_file():
            if endpoint.identity_files_explicit:
                found.notes.append(f"{path} does not exist")
            continue
        try:
            key = _read_private_key(path)
        except paramiko.PasswordRequiredException:
            found.notes.append(f"{path} is passphrase-protected: load it into ssh-agent")
            continue
        except (OSError, paramiko.SSHException) as exc:
            found.notes.append(f"{path} unusable: {_one_line(exc)}")
            continue
        cert_path = Path(f"{path}-cert.pub")
        if cert_path.is_file():
            expiry = _certificate_expiry(cert_path)
            if expiry is not None and expiry <= dt.datetime.now(dt.timezone.utc):
                found.notes.append(
                    f"certificate {cert_path} expired at {expiry:%Y-%m-%d %H:%M} UTC: renew it the way "
                    "your site issues them (e.g. `step ssh login` for smallstep CAs such as "
                    "LEONARDO's 12-hour certificates); aif uses the renewed one at its next connection"
                )
            else:
                certified = copy.copy(key)
                try:
                    certified.load_certificate(str(cert_path))
                except (OSError, ValueError, paramiko.SSHException) as exc:
                    found.notes.append(f"certificate {cert_path} unusable: {_one_line(exc)}")
                else:
                    # The certificate first (sites such as LEONARDO only
                    # accept that), then the bare key as OpenSSH does.
                    found.keys.append(certified)
                    found.tried.append(f"{path.name} (certificate)")
        found.keys.append(key)
        found.tried.append(path.name)
    if endpoint.use_agent and os.environ.get("SSH_AUTH_SOCK"):
        try:
            found.agent = paramiko.Agent()
            agent_keys = found.agent.get_keys()
        except (OSError, paramiko.SSHException) as exc:
            found.notes.append(f"ssh-agent unreachable: {_one_line(exc)}")
            found.close()
        else:
            found.keys.extend(agent_keys)
            found.tried.append(f"agent ({len(agent_keys)} keys)")
    elif endpoint.use_agent:
        found.tried.append("agent (not running)")
    return found


class _OfferKeys(AuthStrategy):
    """Public-key authentication with exactly the keys we chose, in order."""

    def __init__(self, username: str, keys: Sequence[paramiko.PKey]) -> None:
        super().__init__(ssh_config=paramiko.SSHConfig())
        self._username = username
        self._keys = list(keys)

    def get_sources(self) -> Iterator[AuthSource]:
        for key in self._keys:
            yield InMemoryPrivateKey(self._username, key)
