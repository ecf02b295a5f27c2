"""Bring the local Slurm sandbox up and down, and tell whether it is healthy.

The sandbox is three real Slurm 22.05 clusters (north, south, east; see
``gateway.sandbox.sites``), one munged and one sshd listening on 127.0.0.1
with one port per site; each port's sessions see their own cluster. Every
daemon is a child of ``gateway.sandbox.supervisor``, which ``up`` starts as a
detached session leader. All state lives under ``AIF_HOME/sandbox``; ``up``
also writes the site profiles (``AIF_HOME/profiles/sandbox-*.toml``) and the
user config (``AIF_HOME/config.d/sandbox.toml``) the gateway reads.

The CLI (``aif sandbox up|down|status``) is a thin layer over ``up``,
``down`` and ``status``; the integration tests use them directly, and inject
faults with ``stop_controller``/``start_controller``,
``restart_cluster_fresh``, ``stop_sshd``/``start_sshd``,
``kill_ssh_sessions`` and ``drain_nodes``/``resume_nodes``.

This module keeps the lifecycle (``up``, ``down``, ``status``, ``facts``,
starting and stopping the supervisor) and re-exports every public name of
the modules it uses, so callers import from here alone: ``layout`` (the state
directory, the lock, small helpers, /proc), ``health`` (status and waiting
until daemons answer), ``preconditions`` (root, packages, paths and ports),
``provision`` (configs, keys, known_hosts, the login user, the gateway's
files) and ``faults`` (the fault injection).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.errors import SandboxError
from gateway.home import ensure_home
from gateway.record import Record
from gateway.sandbox.configs import SandboxLayout
from gateway.sandbox.faults import (
    CONTROL_TIMEOUT_S,
    drain_nodes,
    kill_ssh_sessions,
    restart_cluster_fresh,
    resume_nodes,
    start_controller,
    start_sshd,
    stop_controller,
    stop_sshd,
)
from gateway.sandbox.health import (
    ANSWERING_NODE_STATES,
    READY_TIMEOUT_S,
    SINFO_TIMEOUT_S,
    SSH_BANNER_TIMEOUT_S,
    SandboxStatus,
    SiteStatus,
    _status,
    _wait_ready,
)
from gateway.sandbox.layout import (
    DOWN_TIMEOUT_S,
    POLL_S,
    SHARED_STATE_DIR,
    SYSTEM_PATH,
    Progress,
    _alive,
    _cmdline,
    _layout,
    _link_state_dir,
    _locked,
    _make_reachable_dirs,
    _names_root,
    _proc_stat,
    _read_supervisor_state,
    _sandbox_processes,
    _signal,
    _tail,
)
from gateway.sandbox.preconditions import (
    DEBIAN_PACKAGES,
    REQUIRED_COMMANDS,
    SAFE_PATH,
    _check_no_foreign_process_on_ports,
    _check_reachable_by_sandbox_user,
    _check_safe_path,
    _require_root_and_packages,
    ensure_packages,
)
from gateway.sandbox.provision import (
    _ensure_sandbox_user,
    _make_datasets,
    _prepare_files,
    _reauthorize_client_key,
    _wipe_run_state,
    _write_gateway_files,
)
from gateway.sandbox.sites import (
    SANDBOX_HOST,
    SANDBOX_SITES,
    SANDBOX_USER,
)

__all__ = [
    "ANSWERING_NODE_STATES",
    "CONTROL_TIMEOUT_S",
    "DEBIAN_PACKAGES",
    "DOWN_TIMEOUT_S",
    "POLL_S",
    "READY_TIMEOUT_S",
    "REQUIRED_COMMANDS",
    "SAFE_PATH",
    "SHARED_STATE_DIR",
    "SINFO_TIMEOUT_S",
    "SSH_BANNER_TIMEOUT_S",
    "SUPERVISOR_START_TIMEOUT_S",
    "SYSTEM_PATH",
    "Progress",
    "SandboxFacts",
    "SandboxStatus",
    "SiteAccess",
    "SiteStatus",
    "down",
    "drain_nodes",
    "ensure_packages",
    "facts",
    "kill_ssh_sessions",
    "restart_cluster_fresh",
    "resume_nodes",
    "start_controller",
    "start_sshd",
    "status",
    "stop_controller",
    "stop_sshd",
    "up",
]

SUPERVISOR_START_TIMEOUT_S = 15.0
# Supervisors started by this process: we are their parent, so `down` can
# reap them (nobody else can: PID 1 here does not reap orphans).
_OUR_SUPERVISORS: dict[int, subprocess.Popen[bytes]] = {}


# --- Public results -----------------------------------------------------------------


class SiteAccess(Record):
    """How to reach one sandbox site, over SSH or locally."""

    name: str
    cluster: str
    host: str
    ssh_port: int
    user: str
    identity_file: Path
    known_hosts: Path
    slurm_conf: Path


class SandboxFacts(Record):
    """Where the sandbox lives and how to reach each site (independent of whether it runs)."""

    aif_home: Path
    root: Path
    sites: tuple[SiteAccess, ...]

    def site(self, name: str) -> SiteAccess:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)


def facts(home: Path | None = None) -> SandboxFacts:
    """Paths, ports and login of each site for the sandbox under ``home`` (default AIF_HOME)."""
    layout = _layout(home)
    return SandboxFacts(
        aif_home=layout.home,
        root=layout.root,
        sites=tuple(
            SiteAccess(
                name=site.name,
                cluster=site.cluster,
                host=SANDBOX_HOST,
                ssh_port=site.ssh_port,
                user=SANDBOX_USER,
                identity_file=layout.client_key,
                known_hosts=layout.known_hosts,
                slurm_conf=layout.slurm_conf(site),
            )
            for site in SANDBOX_SITES
        ),
    )


# --- Public API ---------------------------------------------------------------------


def up(home: Path | None = None, *, progress: Progress | None = None) -> SandboxStatus:
    """Start the sandbox (installing its Debian packages first if root and missing).

    Returns once every node is idle and every sshd port answers. When the
    sandbox is already up and healthy this starts nothing: it only rewrites
    the profiles and the user config and re-appends the client key to
    aifuser's authorized_keys if another tool dropped it (cheap, idempotent). A
    sandbox that is only partly up is stopped and started afresh. On failure
    everything started is stopped again and ``SandboxError`` says why; the
    logs stay under ``AIF_HOME/sandbox/log``.
    """
    say = progress or (lambda _message: None)
    layout = _layout(home)
    current = _status(layout)
    if current.up:
        _reauthorize_client_key(layout)
        _write_gateway_files(layout)
        say("sandbox already up")
        return current
    _require_root_and_packages(say)
    _check_safe_path(layout.root)
    _check_reachable_by_sandbox_user(layout.root.parent)
    started = time.monotonic()
    if layout.real_root is None:
        # The state lives in the home: the login user must pass through it, but nobody may list it.
        ensure_home(layout.home, mode=0o711)
    _make_reachable_dirs(layout.root)
    _link_state_dir(layout)
    with _locked(layout):
        current = _status(layout)  # another `up` may have finished while we waited
        if current.up:
            _write_gateway_files(layout)
            return current
        _check_no_foreign_process_on_ports(layout)
        if _read_supervisor_state(layout) is not None or _sandbox_processes(layout.root):
            say("sandbox is partly up: stopping it first")
            _stop(layout)
        try:
            _start(layout, say)
            _wait_ready(layout, say)
            result = _status(layout)
            if not result.up:
                problems = "; ".join(result.problems)
                raise SandboxError(f"the sandbox started but is not healthy: {problems}")
        except BaseException:
            _stop(layout)
            raise
        _write_gateway_files(layout)
    say(f"sandbox up in {time.monotonic() - started:.1f} s")
    return result


def down(home: Path | None = None) -> None:
    """Stop every sandbox process and clear the run state; a no-op when nothing runs.

    Signals the supervisor (it stops its daemons: TERM, then KILL after a
    short wait, and reaps them), then waits until the supervisor and every
    daemon PID it recorded are gone. A daemon PID in state Z would mean it
    was not reaped yet, so it does not count as gone; the supervisor's own
    zombie does: when the process that ran ``up`` has exited, the supervisor
    was reparented to PID 1, which on machines like this one does not reap
    (or only late), so nobody else can remove that zombie. When the caller of ``down`` is the
    supervisor's parent (the same process ran ``up``, as in the pytest
    fixture), it reaps the supervisor with waitpid and no zombie is left.
    Any sandbox process left over (e.g. the supervisor was killed with -9)
    is then found by its command line, which names the sandbox directory,
    and ended by PID. Finally the run state (pids, Slurm state and spool) is
    removed so the next ``up`` starts clean. Holders of shared SSH connections to the
    sandbox's sites (``gateway.transports.mux``) are stopped first. Keys, configs and logs stay, and
    so do the site profiles and config.d/sandbox.toml (the sites then show as
    unreachable).
    """
    layout = _layout(home)
    # Holders of shared SSH connections to the sandbox's sites (gateway.transports.mux) are
    # this user's processes, not the sandbox's: ask them to leave, whoever runs `down`.
    from gateway.transports.mux import stop_holders

    stop_holders(layout.home, sites=[site.name for site in SANDBOX_SITES])
    if not layout.root.exists():
        return
    if os.geteuid() != 0:
        if _read_supervisor_state(layout) is not None or _sandbox_processes(layout.root):
            raise SandboxError("aif sandbox down must run as root: the sandbox daemons run as root")
        return
    with _locked(layout):
        _stop(layout)


def status(home: Path | None = None) -> SandboxStatus:
    """Check every process and that it answers (sinfo per site, an SSH banner per port)."""
    return _status(_layout(home))


# --- Starting -----------------------------------------------------------------------


def _start_supervisor(layout: SandboxLayout) -> subprocess.Popen[bytes]:
    package_parent = str(Path(__file__).resolve().parents[2])
    python_path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
    with layout.supervisor_log.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.sandbox.supervisor", str(layout.root)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=layout.root,
            # Its own session: it outlives the caller (the CLI exits right after `up`)
            # and a Ctrl-C in the caller's terminal does not reach the daemons.
            start_new_session=True,
            close_fds=True,
            env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "PYTHONPATH": python_path},
        )
    _OUR_SUPERVISORS[proc.pid] = proc
    return proc


def _start(layout: SandboxLayout, say: Progress) -> None:
    shutil.rmtree(layout.log_dir, ignore_errors=True)
    _wipe_run_state(layout)
    _prepare_files(layout)
    client_pub = layout.client_key.with_name(layout.client_key.name + ".pub").read_text()
    entry = _ensure_sandbox_user(client_pub, say)
    _make_datasets(entry)
    say("starting munged, 3 Slurm clusters (north, south, east) and sshd")
    proc = _start_supervisor(layout)
    deadline = time.monotonic() + SUPERVISOR_START_TIMEOUT_S
    while True:
        state = _read_supervisor_state(layout)
        if state is not None and state.ready:
            return
        if proc.poll() is not None:
            raise SandboxError(
                f"the sandbox supervisor exited with {proc.returncode}:"
                f" {_tail(layout.supervisor_log) or layout.supervisor_log}"
            )
        if time.monotonic() > deadline:
            raise SandboxError(
                f"the sandbox supervisor did not start its daemons within"
                f" {SUPERVISOR_START_TIMEOUT_S:.0f} s (see {layout.supervisor_log})"
            )
        time.sleep(POLL_S)


# --- Stopping -----------------------------------------------------------------------


def _reap_if_ours(pid: int) -> bool:
    """Reap ``pid`` if this process is its parent; True once it is reaped (or not ours)."""
    proc = _OUR_SUPERVISORS.get(pid)
    if proc is not None:
        if proc.poll() is None:
            return False
        del _OUR_SUPERVISORS[pid]
        return True
    info = _proc_stat(pid)
    if info is None or info[1] != os.getpid():
        return True
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return reaped == pid


def _stop(layout: SandboxLayout) -> None:
    state = _read_supervisor_state(layout)
    deadline = time.monotonic() + DOWN_TIMEOUT_S
    if state is not None:
        supervisor = state.pid if _names_root(_cmdline(state.pid), layout.root) else None
        if supervisor is None and _proc_stat(state.pid) is not None and state.pid in _OUR_SUPERVISORS:
            supervisor = state.pid  # a zombie has no command line; it is still ours to reap
        daemons = [pid for pid in state.children.values() if _names_root(_cmdline(pid), layout.root)]
        if supervisor is not None and _alive(supervisor):
            _signal(supervisor, signal.SIGTERM)
        else:
            deadline = time.monotonic()  # nobody will stop the daemons: go and end them
        while time.monotonic() < deadline:
            supervisor_gone = supervisor is None or not _alive(supervisor)
            if supervisor_gone:
                daemons = [pid for pid in daemons if _alive(pid)]
            else:
                # A daemon zombie is not gone yet: the supervisor is about to reap it.
                daemons = [pid for pid in daemons if _proc_stat(pid) is not None]
            if supervisor_gone and not daemons:
                break
            time.sleep(POLL_S)
        if supervisor is not None:
            while not _reap_if_ours(supervisor) and time.monotonic() < deadline:
                time.sleep(POLL_S)
    # Whatever the supervisor could not stop (or was not there to stop) is ended by PID.
    leftovers = _sandbox_processes(layout.root)
    for pid in leftovers:
        _signal(pid, signal.SIGTERM)
    stop_by = time.monotonic() + 3.0
    while leftovers and time.monotonic() < stop_by:
        leftovers = [pid for pid in leftovers if _alive(pid)]
        time.sleep(POLL_S)
    for pid in leftovers:
        _signal(pid, signal.SIGKILL)
    for pid in list(_OUR_SUPERVISORS):
        _reap_if_ours(pid)
    _wipe_run_state(layout)
