"""Run commands at a site over SSH (paramiko), on one persistent connection.

What this package promises:

* Host keys are checked strictly against known_hosts: an unknown or changed
  key is refused (``HostKeyRejected``), never added automatically.
* Only public-key authentication: ssh-agent keys and key files, with OpenSSH
  user certificates (``<key>-cert.pub``) when present. No passwords.
* ``~/.ssh/config`` is honoured for HostName, User, Port, IdentityFile,
  IdentitiesOnly, ProxyJump, ProxyCommand and UserKnownHostsFile; explicit
  values in ``SshTarget`` win over it.
* Each argv element is shell-quoted (the remote login shell parses the
  command line), so no argument can run anything.
* One connection per site per process (``connection_for``), opened lazily,
  re-opened before a command when it died, never used to re-send a command
  that may have run: a drop (or timeout) while a command runs raises
  ``ConnectionLost`` (a ``SiteUnreachable``) and the caller decides whether
  retrying is safe. Failing to connect at all is a plain ``SiteUnreachable``:
  nothing was sent.

Its modules, each built on the ones before it: ``paramiko_import``
(paramiko without invoke unless ``Match exec`` needs it), ``config`` (``SshTarget``,
``~/.ssh/config``, the route), ``known_hosts`` (host keys), ``identities``
(client keys, certificates, the agent), ``connection`` (sockets, logins, jump
hosts) and ``transport`` (``SshTransport``, SFTP, ``connection_for``).
"""

from __future__ import annotations

# First, before any module of the package imports paramiko: see paramiko_import.py.
import gateway.transports.ssh.paramiko_import  # noqa: F401

# isort: split
from gateway.transports.ssh.config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IDENTITY_NAMES,
    DEFAULT_PORT,
    GLOBAL_KNOWN_HOSTS,
    ResolvedEndpoint,
    SshTarget,
    resolve_route,
)
from gateway.transports.ssh.transport import SshTransport, close_all, connection_for

# isort: split
# Private names the unit tests reach through the package.
from gateway.transports.ssh.identities import _identities as _identities
from gateway.transports.ssh.known_hosts import _files_naming as _files_naming
from gateway.transports.ssh.known_hosts import _load_known_hosts as _load_known_hosts
from gateway.transports.ssh.known_hosts import _RejectUnknownHostKey as _RejectUnknownHostKey

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_IDENTITY_NAMES",
    "DEFAULT_PORT",
    "GLOBAL_KNOWN_HOSTS",
    "ResolvedEndpoint",
    "SshTarget",
    "SshTransport",
    "close_all",
    "connection_for",
    "resolve_route",
]
