"""Whether the sandbox is healthy, and waiting until it is.

``_status`` checks every process the supervisor recorded and that it answers
(sinfo per site, an SSH banner per port); the ``_wait_*`` helpers poll until
nodes and sshd answer, failing fast when a daemon dies (used by ``up`` and by
the fault injection that restarts daemons).
"""

from __future__ import annotations

import grp
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, field
from pathlib import Path
from typing import Any

from gateway.errors import SandboxError
from gateway.record import Record
from gateway.sandbox.configs import (
    MESSAGE_TIMEOUT_S,
    MUNGED_DAEMON,
    SSHD_DAEMON,
    SandboxLayout,
    slurmctld_daemon,
    slurmd_daemon,
)
from gateway.sandbox.layout import (
    POLL_S,
    Progress,
    _alive,
    _cmdline,
    _exit_text,
    _names_root,
    _read_supervisor_state,
    _run,
)
from gateway.sandbox.sites import (
    SANDBOX_GROUP,
    SANDBOX_HOST,
    SANDBOX_SITES,
    SandboxSite,
)

READY_TIMEOUT_S = 30.0
SINFO_TIMEOUT_S = MESSAGE_TIMEOUT_S + 3.0
SSH_BANNER_TIMEOUT_S = 2.0
# sinfo's compact node states in which slurmd answers the controller.
ANSWERING_NODE_STATES = frozenset({"idle", "mix", "alloc", "comp", "resv", "plnd", "maint"})


# --- Public results -----------------------------------------------------------------


class SiteStatus(Record):
    """Health of one sandbox site."""

    name: str
    cluster: str
    ssh_port: int
    slurm_conf: str
    controller: bool  # slurmctld runs and sinfo gets an answer
    nodes: bool  # every slurmd runs and answers the controller
    sshd: bool  # sshd runs and sends its banner on this site's port
    node_states: dict[str, str] = field(default_factory=dict)  # sinfo's %t per node

    @property
    def healthy(self) -> bool:
        return self.controller and self.nodes and self.sshd


class SandboxStatus(Record):
    """Health of the whole sandbox; ``up`` is true only when every part answers."""

    up: bool
    root: str
    supervisor_pid: int | None
    munged: bool
    sites: tuple[SiteStatus, ...]
    problems: tuple[str, ...]
    stopped: tuple[str, ...] = ()  # daemons stopped on request (fault injection)

    def site(self, name: str) -> SiteStatus:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """The status as JSON text (what ``aif sandbox status --json`` prints)."""
        return json.dumps(self.to_dict(), indent=2)


# --- Status -------------------------------------------------------------------------


def _sinfo_node_states(conf: Path) -> dict[str, str] | None:
    """Node name -> sinfo compact state, or None when the controller does not answer."""
    try:
        result = _run(["sinfo", "-h", "-N", "-o", "%N %t"], timeout=SINFO_TIMEOUT_S, SLURM_CONF=str(conf))
    except subprocess.TimeoutExpired:
        return None
    if result.returncode != 0:
        return None
    states: dict[str, str] = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]  # a node in two partitions is listed twice
    return states


def _node_answers(state: str | None) -> bool:
    """sinfo marks a node whose slurmd does not answer with '*'; unk/down/drain are not usable."""
    if state is None or "*" in state:
        return False
    return state.rstrip("~#!%$@^-") in ANSWERING_NODE_STATES


def _ssh_answers(port: int) -> bool:
    """sshd answers when it sends its "SSH-2.0-..." banner."""
    try:
        with socket.create_connection((SANDBOX_HOST, port), timeout=SSH_BANNER_TIMEOUT_S) as conn:
            return conn.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _status(layout: SandboxLayout) -> SandboxStatus:
    state = _read_supervisor_state(layout)
    supervisor_alive = (
        state is not None and _alive(state.pid) and _names_root(_cmdline(state.pid), layout.root)
    )
    children = state.children if state is not None and supervisor_alive else {}
    exited = state.exited if state is not None else {}
    stopped = sorted(state.stopped) if state is not None and supervisor_alive else []
    problems: list[str] = []
    if state is None:
        problems.append("sandbox is not running")
    elif not supervisor_alive:
        problems.append(f"supervisor (pid {state.pid}) is gone")
    for name, code in sorted(exited.items()):
        problems.append(_exit_text(layout, name, code))
    problems.extend(f"{name} is stopped (on request)" for name in stopped)

    def daemon_alive(name: str) -> bool:
        pid = children.get(name)
        return pid is not None and _alive(pid)

    munged = daemon_alive(MUNGED_DAEMON)
    if state is not None and supervisor_alive and not munged and MUNGED_DAEMON not in [*exited, *stopped]:
        problems.append("munged is not running")

    def check_site(site: SandboxSite) -> tuple[SiteStatus, list[str]]:
        notes: list[str] = []
        ctld_alive = daemon_alive(slurmctld_daemon(site))
        # Skip sinfo when nothing can answer: it would only block for MessageTimeout.
        states = _sinfo_node_states(layout.slurm_conf(site)) if ctld_alive and munged else None
        controller = states is not None
        if ctld_alive and munged and not controller:
            notes.append(f"{site.cluster}: slurmctld runs but sinfo gets no answer")
        nodes_ok = controller
        for node in site.node_names:
            node_state = (states or {}).get(node)
            if not daemon_alive(slurmd_daemon(node)):
                nodes_ok = False  # why is already said (exited, or supervisor gone)
            elif not _node_answers(node_state):
                nodes_ok = False
                if controller:
                    notes.append(f"{node} is {node_state or 'unknown to slurmctld'}")
        sshd = daemon_alive(SSHD_DAEMON) and _ssh_answers(site.ssh_port)
        if state is not None and supervisor_alive and not sshd and SSHD_DAEMON not in stopped:
            notes.append(f"sshd does not answer on port {site.ssh_port}")
        site_status = SiteStatus(
            name=site.name,
            cluster=site.cluster,
            ssh_port=site.ssh_port,
            slurm_conf=str(layout.slurm_conf(site)),
            controller=controller,
            nodes=nodes_ok,
            sshd=sshd,
            node_states=dict(sorted((states or {}).items())),
        )
        return site_status, notes

    if children:
        with ThreadPoolExecutor(max_workers=len(SANDBOX_SITES)) as pool:
            checked = list(pool.map(check_site, SANDBOX_SITES))
    else:
        checked = [check_site(site) for site in SANDBOX_SITES]
    for _, notes in checked:
        problems.extend(notes)
    sites = tuple(site_status for site_status, _ in checked)
    healthy = supervisor_alive and munged and all(s.healthy for s in sites)
    return SandboxStatus(
        up=healthy,
        root=str(layout.root),
        supervisor_pid=state.pid if state is not None and supervisor_alive else None,
        munged=munged,
        sites=sites,
        problems=tuple(problems),
        stopped=tuple(stopped),
    )


# --- Waiting until it answers -------------------------------------------------------


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((SANDBOX_HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _check_no_daemon_died(layout: SandboxLayout, when: str, names: Collection[str] | None = None) -> None:
    """Fail fast when the supervisor or one of ``names`` (default: any daemon) has died."""
    state = _read_supervisor_state(layout)
    if state is None or not _alive(state.pid):
        raise SandboxError(f"the sandbox supervisor died (see {layout.supervisor_log})")
    for name, code in state.exited.items():
        if names is None or name in names:
            raise SandboxError(f"{_exit_text(layout, name, code)} {when}")


def _wait_nodes(
    layout: SandboxLayout,
    site: SandboxSite,
    deadline: float,
    node_ready: Callable[[str | None], bool],
    check: Callable[[], None],
) -> None:
    """Until sinfo answers and ``node_ready`` holds for every node's state (sinfo's %t)."""
    last_seen: dict[str, str] | None = None
    while True:
        check()
        # sinfo blocks for MessageTimeout while no controller listens: ask only once it does.
        if _port_open(site.slurmctld_port):
            last_seen = _sinfo_node_states(layout.slurm_conf(site))
            if last_seen is not None and all(node_ready(last_seen.get(n)) for n in site.node_names):
                return
        if time.monotonic() > deadline:
            raise SandboxError(
                f"{site.cluster}: the nodes were not ready in time (last seen: {last_seen});"
                f" logs in {layout.log_dir}"
            )
        time.sleep(2 * POLL_S)


def _wait_ssh(layout: SandboxLayout, deadline: float, check: Callable[[], None]) -> None:
    """Until sshd sends its banner on every site's port."""
    for site in SANDBOX_SITES:
        while not _ssh_answers(site.ssh_port):
            check()
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"sshd does not answer on port {site.ssh_port} (see {layout.daemon_output(SSHD_DAEMON)})"
                )
            time.sleep(POLL_S)


def _share_jobcomp_with_sandbox_group(layout: SandboxLayout, site: SandboxSite) -> None:
    """Let the login user run `sacct -c`, which opens the jobcomp file read-write.

    Through the sandbox group (root:aifsandbox 660), so no other user can
    read or rewrite the job history. slurmctld resets the mode to 644 when it
    opens the file at start (the group stays): call this once the controller
    answers, after every start of it.
    """
    path = layout.jobcomp_file(site)
    os.chown(path, 0, grp.getgrnam(SANDBOX_GROUP).gr_gid)
    os.chmod(path, 0o660)


def _wait_ready(layout: SandboxLayout, say: Progress) -> None:
    """Until every node is idle and every sshd port answers; fails fast if a daemon dies."""
    say("waiting for every node to be idle")
    deadline = time.monotonic() + READY_TIMEOUT_S

    def check() -> None:
        _check_no_daemon_died(layout, "during start")

    for site in SANDBOX_SITES:
        _wait_nodes(layout, site, deadline, lambda state: state == "idle", check)
        _share_jobcomp_with_sandbox_group(layout, site)
    _wait_ssh(layout, deadline, check)
