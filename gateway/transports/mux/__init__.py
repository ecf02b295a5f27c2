"""One SSH connection per site shared by every aif process, like OpenSSH's ControlMaster.

Opt-in (``[ssh] share_connection = true`` in the user's config, or per site).
A holder process per site (``holder``) keeps one authenticated ``SshTransport``
and runs the commands other aif processes send it over a unix socket in
``$AIF_HOME/mux``; the client side (``client.SharedTransport``) imports no
paramiko and falls back to a direct connection whenever no holder answers.
The wire format and the shared checks are in ``protocol``.
"""

from gateway.transports.mux.client import SharedTransport, holder_pids, shared_connection_for, stop_holders
from gateway.transports.mux.protocol import DEFAULT_PERSIST_S, SharedTarget

__all__ = [
    "DEFAULT_PERSIST_S",
    "SharedTarget",
    "SharedTransport",
    "holder_pids",
    "shared_connection_for",
    "stop_holders",
]
