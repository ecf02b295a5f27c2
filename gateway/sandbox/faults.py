"""Fault injection into the running sandbox, for tests (root; the sandbox must be up).

``site`` is a sandbox site name ("sandbox-north"). Each call holds the same
lock as up and down, and returns once the fault is in place (or repaired).
The stop/start requests go to the supervisor over its control socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from gateway.errors import SandboxError
from gateway.sandbox.configs import (
    SSHD_DAEMON,
    SandboxLayout,
    slurmctld_daemon,
    slurmd_daemon,
)
from gateway.sandbox.health import (
    READY_TIMEOUT_S,
    SINFO_TIMEOUT_S,
    _check_no_daemon_died,
    _node_answers,
    _share_jobcomp_with_sandbox_group,
    _wait_nodes,
    _wait_ssh,
)
from gateway.sandbox.layout import (
    DOWN_TIMEOUT_S,
    POLL_S,
    _alive,
    _cmdline,
    _comm,
    _environ,
    _last_line,
    _layout,
    _locked,
    _names_root,
    _read_supervisor_state,
    _run,
    _signal,
    _SupervisorState,
)
from gateway.sandbox.provision import _make_cluster_state_dirs
from gateway.sandbox.sites import (
    SANDBOX_SITES,
    SANDBOX_USER,
    SandboxSite,
    site_by_name,
)
from gateway.sandbox.supervisor import descendants

# Above the supervisor's worst case for one request: TERM grace, then KILL grace.
CONTROL_TIMEOUT_S = 15.0


# --- Fault injection ----------------------------------------------------------------


def stop_controller(site: str, home: Path | None = None) -> None:
    """Stop the site's slurmctld (a controller outage); its nodes and running jobs go on.

    Clients at the site then fail after about MessageTimeout - 1 s with
    "Unable to contact slurm controller"; ``status`` shows the controller down.
    slurmctld saves its jobs to StateSaveLocation as it stops.
    """
    layout, cluster = _layout(home), _sandbox_site(site)
    with _locked_running(layout):
        _supervisor_request(layout, {"stop": [slurmctld_daemon(cluster)]})


def start_controller(site: str, home: Path | None = None) -> None:
    """Start the site's slurmctld again, with the jobs it saved.

    Returns once it answers and every node answers it again (a node running
    jobs shows mix or alloc), about 1 s.
    """
    layout, cluster = _layout(home), _sandbox_site(site)
    with _locked_running(layout):
        _supervisor_request(layout, {"start": [slurmctld_daemon(cluster)]})
        _wait_nodes_after_restart(layout, cluster, lambda _state: True)
        # The recovered nodes stay "unk" until their slurmd registers again,
        # which takes slurmctld about 4 s to ask for; a reconfigure asks at once.
        _scontrol(layout, cluster, "reconfigure")
        _wait_nodes_after_restart(layout, cluster, _node_answers)


def restart_cluster_fresh(site: str, home: Path | None = None) -> None:
    """Reinstall the site's cluster: Slurm job ids start at 1 again, its history stays.

    Stops its slurmctld and slurmds, kills its running jobs, wipes its
    StateSaveLocation and spool (as after a reinstall, or MaxJobId wrapping
    round), keeps its jobcomp file (what `sacct -c` reads), starts them again
    and returns once every node is idle.
    """
    layout, cluster = _layout(home), _sandbox_site(site)
    daemons = [slurmctld_daemon(cluster), *(slurmd_daemon(node) for node in cluster.node_names)]
    with _locked_running(layout):
        _supervisor_request(layout, {"stop": daemons})
        _kill_job_steps(layout, cluster)
        for directory in (layout.state_dir(cluster), layout.spool_dir(cluster)):
            shutil.rmtree(directory, ignore_errors=True)
        _make_cluster_state_dirs(layout, cluster)
        _supervisor_request(layout, {"start": daemons})
        _wait_nodes_after_restart(layout, cluster, lambda state: state == "idle")


def stop_sshd(home: Path | None = None) -> None:
    """Stop the listening sshd: every site's port refuses new connections.

    Connections already open go on (their per-connection sshd processes
    stay), as with a real sshd restart; ``kill_ssh_sessions`` drops those.
    """
    layout = _layout(home)
    with _locked_running(layout):
        _supervisor_request(layout, {"stop": [SSHD_DAEMON]})


def start_sshd(home: Path | None = None) -> None:
    """Start the listening sshd again; returns once every site's port sends its banner."""
    layout = _layout(home)
    with _locked_running(layout):
        _supervisor_request(layout, {"start": [SSHD_DAEMON]})
        deadline = time.monotonic() + READY_TIMEOUT_S
        _wait_ssh(layout, deadline, lambda: _check_no_daemon_died(layout, "on restart", [SSHD_DAEMON]))


def kill_ssh_sessions(home: Path | None = None, user: str = SANDBOX_USER) -> list[int]:
    """Kill (SIGKILL) the sandbox sshd's per-connection processes serving ``user``.

    Every connection of that user drops at once, mid-command if one runs (as
    when a link fails); the listener stays, so the next connection works.
    Returns the pids killed (none when no connection was open).
    """
    layout = _layout(home)
    with _locked_running(layout) as supervisor:
        # "[priv]" (root), "@notty" (the user's, with a session open) and the bare
        # "sshd: USER" of a connection with no session open (an idle shared connection).
        titles = (f"sshd: {user} ", f"sshd: {user}@")
        victims = [
            pid
            for pid in descendants(supervisor.pid)
            if _comm(pid) == "sshd"
            and ((title := " ".join(_cmdline(pid))).startswith(titles) or title == f"sshd: {user}")
        ]
        for pid in victims:
            _signal(pid, signal.SIGKILL)
        return victims


def drain_nodes(site: str, home: Path | None = None, *, reason: str = "aif sandbox fault injection") -> None:
    """Drain every node of the site: running jobs go on, new jobs stay pending."""
    _scontrol_nodes(site, home, "state=drain", f"reason={reason}")


def resume_nodes(site: str, home: Path | None = None) -> None:
    """Return every node of the site to service (undoes ``drain_nodes``)."""
    _scontrol_nodes(site, home, "state=resume")


def _sandbox_site(name: str) -> SandboxSite:
    try:
        return site_by_name(name)
    except KeyError:
        names = ", ".join(site.name for site in SANDBOX_SITES)
        raise SandboxError(f"no sandbox site {name!r} (the sites are {names})") from None


@contextlib.contextmanager
def _locked_running(layout: SandboxLayout) -> Iterator[_SupervisorState]:
    """The lock of up and down, once the sandbox is known to run; yields its supervisor."""
    _running_supervisor(layout)
    with _locked(layout):
        yield _running_supervisor(layout)  # `down` may have run while we waited


def _running_supervisor(layout: SandboxLayout) -> _SupervisorState:
    if os.geteuid() != 0:
        raise SandboxError("sandbox fault injection must run as root: the sandbox daemons run as root")
    state = _read_supervisor_state(layout)
    if state is None or not _alive(state.pid) or not _names_root(_cmdline(state.pid), layout.root):
        raise SandboxError(f"the sandbox in {layout.root} is not running: run `aif sandbox up` first")
    return state


def _supervisor_request(layout: SandboxLayout, request: dict[str, list[str]]) -> None:
    """Send one stop/start request to the supervisor and wait for its answer."""
    _running_supervisor(layout)
    # Through /proc/self/fd: an AF_UNIX path may not exceed 107 bytes, and the root can be longer.
    run_dir = os.open(layout.run_dir, os.O_PATH | os.O_DIRECTORY)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(CONTROL_TIMEOUT_S)
            conn.connect(f"/proc/self/fd/{run_dir}/{layout.supervisor_socket.name}")
            conn.sendall(json.dumps(request).encode() + b"\n")
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                answer += chunk
    except OSError as err:
        where = layout.supervisor_socket
        raise SandboxError(f"cannot reach the sandbox supervisor at {where}: {err}") from err
    finally:
        os.close(run_dir)
    try:
        reply = json.loads(answer)
    except ValueError:
        reply = {"error": f"unreadable answer {answer!r}"}
    if not reply.get("ok"):
        raise SandboxError(f"the sandbox supervisor could not {request}: {reply.get('error')}")


def _wait_nodes_after_restart(
    layout: SandboxLayout, site: SandboxSite, node_ready: Callable[[str | None], bool]
) -> None:
    daemons = [slurmctld_daemon(site), *(slurmd_daemon(node) for node in site.node_names)]
    deadline = time.monotonic() + READY_TIMEOUT_S
    _wait_nodes(
        layout, site, deadline, node_ready, lambda: _check_no_daemon_died(layout, "on restart", daemons)
    )
    _share_jobcomp_with_sandbox_group(layout, site)


def _kill_job_steps(layout: SandboxLayout, site: SandboxSite) -> None:
    """Kill the site's slurmstepds and the jobs under them (they outlive slurmd)."""
    supervisor = _running_supervisor(layout)
    marker = f"SLURM_CONF={layout.slurm_conf(site)}".encode()
    steps = [
        pid for pid in descendants(supervisor.pid) if _comm(pid) == "slurmstepd" and marker in _environ(pid)
    ]
    victims = [*steps, *(pid for step in steps for pid in descendants(step))]
    for pid in victims:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + DOWN_TIMEOUT_S
    while any(_alive(pid) for pid in victims) and time.monotonic() < deadline:
        time.sleep(POLL_S)


def _scontrol_nodes(site: str, home: Path | None, *settings: str) -> None:
    cluster = _sandbox_site(site)
    _scontrol(_layout(home), cluster, "update", f"nodename={','.join(cluster.node_names)}", *settings)


def _scontrol(layout: SandboxLayout, site: SandboxSite, *args: str) -> None:
    argv = ["scontrol", *args]
    result = _run(argv, timeout=SINFO_TIMEOUT_S, SLURM_CONF=str(layout.slurm_conf(site)))
    if result.returncode != 0:
        detail = _last_line(result.stderr) or _last_line(result.stdout)
        raise SandboxError(f"{' '.join(argv)} failed at {site.cluster}: {detail}")
