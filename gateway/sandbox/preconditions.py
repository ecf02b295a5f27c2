"""What ``up`` checks before it starts anything, and the Debian packages it installs.

Root, the commands the sandbox runs (installed with apt-get when missing), a
sandbox directory whose path the configs can hold and the sandbox user can
reach, and sandbox ports no other program holds.
"""

from __future__ import annotations

import os
import re
import socket
import stat
from pathlib import Path

from gateway.errors import SandboxError
from gateway.sandbox.configs import SandboxLayout
from gateway.sandbox.layout import (
    Progress,
    _blocking_directory,
    _last_line,
    _run,
    _sandbox_processes,
    _which,
    _write_file,
)
from gateway.sandbox.sites import (
    SANDBOX_USER,
    sandbox_ports,
)

DEBIAN_PACKAGES = ("slurm-wlm", "munge", "openssh-server")
# Commands the sandbox runs, and the Debian package (pulled in by the above) providing each.
REQUIRED_COMMANDS = {
    "munged": "munge",
    "mungekey": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sinfo": "slurm-client",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
}
# Paths end up unquoted in slurm.conf and sshd_config: keep to characters both read literally.
SAFE_PATH = re.compile(r"[A-Za-z0-9._/+@:,=-]+")


# --- Preconditions ------------------------------------------------------------------


def _missing_commands() -> list[str]:
    return [command for command in REQUIRED_COMMANDS if _which(command) is None]


def ensure_packages(progress: Progress | None = None) -> None:
    """Install slurm-wlm, munge and openssh-server from Debian when missing (root only)."""
    _require_root_and_packages(progress or (lambda _message: None))


def _require_root_and_packages(say: Progress) -> None:
    missing = _missing_commands()
    install = f"apt-get install -y {' '.join(DEBIAN_PACKAGES)}"
    if os.geteuid() != 0:
        if missing:
            raise SandboxError(
                f"the sandbox needs {', '.join(missing)}: as root, run {install}"
                " (and run `aif sandbox up` as root)"
            )
        raise SandboxError(
            "aif sandbox up must run as root: it starts slurmd and sshd and creates"
            f" the login user {SANDBOX_USER}"
        )
    if missing:
        _install_packages(missing, say)


def _install_packages(missing: list[str], say: Progress) -> None:
    if _which("apt-get") is None:
        raise SandboxError(
            f"the sandbox needs {', '.join(missing)} and only knows how to install them with"
            f" apt-get (Debian packages {' '.join(DEBIAN_PACKAGES)})"
        )
    say(f"installing {' '.join(DEBIAN_PACKAGES)} (missing: {', '.join(missing)})")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    # The packages' own services must not start: the sandbox runs its own
    # daemons, and an sshd on port 22 would be a surprise. policy-rc.d is
    # Debian's switch for that; one that already exists is left alone.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if not policy.exists():
        _write_file(policy, "#!/bin/sh\n# aif sandbox: install without starting services\nexit 101\n", 0o755)
        made_policy = True
    try:
        for argv in (
            ["apt-get", "update"],
            ["apt-get", "install", "-y", *DEBIAN_PACKAGES],
        ):
            result = _run(argv, timeout=600.0, **env)
            if result.returncode != 0:
                detail = _last_line(result.stderr) or _last_line(result.stdout)
                raise SandboxError(f"{' '.join(argv)} failed ({result.returncode}): {detail}")
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)
    still = _missing_commands()
    if still:
        raise SandboxError(f"installed {' '.join(DEBIAN_PACKAGES)} but {', '.join(still)} missing")


def _check_safe_path(root: Path) -> None:
    if not SAFE_PATH.fullmatch(str(root)):
        raise SandboxError(
            f"the sandbox directory {root} has characters Slurm and sshd configs cannot hold:"
            " point AIF_HOME at a plain path (letters, digits, . _ - /)"
        )


def _check_reachable_by_sandbox_user(root: Path) -> None:
    """aifuser's sbatch reads slurm.conf and the munge socket under ``root``: it must get there."""
    directory = _blocking_directory(root)
    if directory is not None:
        mode = stat.S_IMODE(directory.stat().st_mode)
        raise SandboxError(
            f"the sandbox login user {SANDBOX_USER} cannot enter {directory} (mode {mode:o})"
            f" to reach {root}: remove {root} and run `aif sandbox up` again, or run chmod o+x {directory}"
        )


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def _check_no_foreign_process_on_ports(layout: SandboxLayout) -> None:
    """Fail early and clearly rather than with a daemon dying on 'address in use'."""
    if _sandbox_processes(layout.root):
        return  # our own leftovers hold the ports; `up` stops them first
    taken = [port for port in sandbox_ports() if _port_taken(port)]
    if taken:
        raise SandboxError(
            f"port(s) {', '.join(map(str, taken))} needed by the sandbox are in use by another"
            " program (a sandbox under another AIF_HOME?): stop it first"
        )
