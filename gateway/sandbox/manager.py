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
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import SandboxError
from gateway.home import aif_home, ensure_home
from gateway.sandbox.configs import (
    MESSAGE_TIMEOUT_S,
    MUNGED_DAEMON,
    SSHD_DAEMON,
    SandboxBinaries,
    SandboxLayout,
    render_cgroup_conf,
    render_gres_conf,
    render_known_hosts,
    render_profile_toml,
    render_slurm_conf,
    render_sshd_config,
    render_supervisor_plan,
    render_user_config_toml,
    slurmctld_daemon,
    slurmd_daemon,
)
from gateway.sandbox.sites import (
    SANDBOX_GROUP,
    SANDBOX_HOST,
    SANDBOX_SITES,
    SANDBOX_USER,
    SandboxSite,
    sandbox_ports,
    site_by_name,
)
from gateway.sandbox.supervisor import descendants

Progress = Callable[[str], None]

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
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Paths end up unquoted in slurm.conf and sshd_config: keep to characters both read literally.
SAFE_PATH = re.compile(r"[A-Za-z0-9._/+@:,=-]+")

SUPERVISOR_START_TIMEOUT_S = 15.0
READY_TIMEOUT_S = 30.0
DOWN_TIMEOUT_S = 20.0  # above the supervisor's own worst case (TERM/KILL rounds)
SINFO_TIMEOUT_S = MESSAGE_TIMEOUT_S + 3.0
SSH_BANNER_TIMEOUT_S = 2.0
# Above the supervisor's worst case for one request: TERM grace, then KILL grace.
CONTROL_TIMEOUT_S = 15.0
POLL_S = 0.05
# sinfo's compact node states in which slurmd answers the controller.
ANSWERING_NODE_STATES = frozenset({"idle", "mix", "alloc", "comp", "resv", "plnd", "maint"})

# Supervisors started by this process: we are their parent, so `down` can
# reap them (nobody else can: PID 1 here does not reap orphans).
_OUR_SUPERVISORS: dict[int, subprocess.Popen[bytes]] = {}


# --- Public results ---------------------------------------------------------


@dataclass(frozen=True)
class SiteStatus:
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


@dataclass(frozen=True)
class SandboxStatus:
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


@dataclass(frozen=True)
class SiteAccess:
    """How to reach one sandbox site, over SSH or locally."""

    name: str
    cluster: str
    host: str
    ssh_port: int
    user: str
    identity_file: Path
    known_hosts: Path
    slurm_conf: Path


@dataclass(frozen=True)
class SandboxFacts:
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


# --- Public API -------------------------------------------------------------


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


# --- Fault injection, for tests (root; the sandbox must be up) ----------------------
#
# ``site`` is a sandbox site name ("sandbox-north"). Each call holds the same
# lock as up and down, and returns once the fault is in place (or repaired).


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


# --- Layout and small helpers -----------------------------------------------


# Used when AIF_HOME is not enterable by the sandbox user (root's home is 0700).
SHARED_STATE_DIR = Path("/var/lib/aif-sandbox")


def _layout(home: Path | None) -> SandboxLayout:
    """The layout; the state lives in AIF_HOME/sandbox, or behind that name as a symlink."""
    home = (home if home is not None else aif_home()).expanduser().absolute()
    link = home / "sandbox"
    if link.is_symlink():
        return SandboxLayout(home, real_root=link.resolve())
    if link.exists() or _blocking_directory(home) is None:
        return SandboxLayout(home)
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:12]
    return SandboxLayout(home, real_root=SHARED_STATE_DIR / digest)


def _link_state_dir(layout: SandboxLayout) -> None:
    """Make AIF_HOME/sandbox point at the real state directory, when it lives elsewhere."""
    if layout.real_root is None:
        return
    link = layout.home / "sandbox"
    ensure_home(layout.home)  # private (0700): the state the sandbox user needs lives elsewhere
    if not link.is_symlink():
        link.symlink_to(layout.real_root, target_is_directory=True)


@contextlib.contextmanager
def _locked(layout: SandboxLayout) -> Iterator[None]:
    """One `up` or `down` at a time per sandbox directory."""
    with layout.lock_file.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _make_dir(path: Path, mode: int = 0o755) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)  # mkdir's mode is masked by umask; the mode matters here


def _make_reachable_dirs(path: Path) -> None:
    """Create ``path`` and any missing parent with mode 755, whatever the umask."""
    missing = [p for p in [path, *path.parents] if not p.exists()]
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir()
        os.chmod(directory, 0o755)


def _write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Write atomically (readers never see half a file), with an exact mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _run(argv: list[str], *, timeout: float = 60.0, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PATH": SYSTEM_PATH, **env},
        check=False,
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _tail(path: Path) -> str:
    try:
        return _last_line(path.read_text(errors="replace")[-4000:])
    except OSError:
        return ""


def _exit_text(layout: SandboxLayout, daemon: str, code: int) -> str:
    """How a daemon ended, with the last line of its output (usually the reason)."""
    log = layout.daemon_output(daemon)
    how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
    return f"{daemon} {how} (last output: {_tail(log) or 'none'}; see {log})"


def _which(command: str) -> str | None:
    return shutil.which(command, path=SYSTEM_PATH)


# --- /proc --------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of ``pid``, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # comm may contain spaces and ')'
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    info = _proc_stat(pid)
    return info is not None and info[0] != "Z"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").rstrip("\0").split("\0")


def _names_root(cmdline: list[str], root: Path) -> bool:
    """Does this command line belong to the sandbox in ``root``?

    Every sandbox daemon is started with a path under root (and the
    supervisor with root itself), so a reused PID is never mistaken for ours.
    """
    prefix = f"{root}/"
    return any(arg == str(root) or prefix in arg for arg in cmdline)


def _sandbox_processes(root: Path) -> list[int]:
    """Live processes (other than this one) whose command line names the sandbox."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            pid = int(entry)
            if _names_root(_cmdline(pid), root) and _alive(pid):
                found.append(pid)
    return found


# --- Supervisor state ---------------------------------------------------------


@dataclass(frozen=True)
class _SupervisorState:
    pid: int
    ready: bool
    children: dict[str, int]
    exited: dict[str, int]
    stopped: frozenset[str]  # stopped on request (fault injection): down, not failed


def _read_supervisor_state(layout: SandboxLayout) -> _SupervisorState | None:
    try:
        data = json.loads(layout.supervisor_state.read_text())
    except (OSError, ValueError):
        return None
    return _SupervisorState(
        pid=int(data["pid"]),
        ready=bool(data.get("ready")),
        children={str(k): int(v) for k, v in dict(data.get("children", {})).items()},
        exited={str(k): int(v) for k, v in dict(data.get("exited", {})).items()},
        stopped=frozenset(str(name) for name in data.get("stopped", [])),
    )


# --- Status -----------------------------------------------------------------


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


# --- Preconditions --------------------------------------------------------------


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


def _blocking_directory(path: Path) -> Path | None:
    """The first directory on the way to ``path`` the sandbox user cannot enter, if any."""
    entry = _user_entry(SANDBOX_USER)
    user_uid = entry.pw_uid if entry is not None else -1
    for directory in [path, *path.parents]:
        try:
            info = directory.stat()
        except FileNotFoundError:
            continue  # created by `up` with mode 755
        if info.st_uid != user_uid and not info.st_mode & stat.S_IXOTH:
            return directory
    return None


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


# --- Starting ---------------------------------------------------------------------


def _plugin_dir() -> str:
    """Where Debian put Slurm's plugins (the directory name holds the architecture)."""
    for candidate in [*sorted(glob.glob("/usr/lib/*/slurm-wlm")), "/usr/lib/slurm-wlm"]:
        if Path(candidate, "select_cons_tres.so").exists():
            return candidate
    raise SandboxError("cannot find Slurm's plugin directory (/usr/lib/*/slurm-wlm)")


def _binaries() -> SandboxBinaries:
    found = {}
    for name in ("munged", "slurmctld", "slurmd", "sshd"):
        path = _which(name)
        if path is None:
            raise SandboxError(f"{name} is not installed")
        found[name] = path
    return SandboxBinaries(**found)


def _wipe_run_state(layout: SandboxLayout) -> None:
    """Remove what a previous run left: a node drained then would otherwise stay drained."""
    doomed = [layout.run_dir]
    for site in SANDBOX_SITES:
        doomed += [layout.state_dir(site), layout.spool_dir(site)]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)


def _ssh_keygen(path: Path, comment: str) -> None:
    if path.exists() and path.with_name(path.name + ".pub").exists():
        return  # kept across restarts so known_hosts and authorized_keys stay valid
    path.unlink(missing_ok=True)
    result = _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    if result.returncode != 0:
        raise SandboxError(f"ssh-keygen failed: {_last_line(result.stderr)}")


def _make_cluster_state_dirs(layout: SandboxLayout, site: SandboxSite) -> None:
    # slurmctld's saved jobs hold their scripts and environments: root only.
    _make_dir(layout.state_dir(site), 0o700)
    # slurmd's spool is 755 as Slurm's own default: each job's directory in it
    # belongs to the job's user, who must get to it.
    _make_dir(layout.spool_dir(site))
    for node in site.node_names:
        _make_dir(layout.spool_dir(site) / node)  # slurmd does not create it


def _prepare_files(layout: SandboxLayout) -> None:
    hostname = socket.gethostname().split(".")[0]  # `hostname -s`: slurmctld insists
    plugin_dir = _plugin_dir()
    binaries = _binaries()
    # The sandbox user reaches slurm.conf and the munge socket through root;
    # run/ holds no secret (pids, the plan) and lets any user read the status.
    for directory in (layout.root, layout.run_dir, layout.ssh_dir):
        _make_dir(directory)
    # Only root (the daemons, whoever debugs them) reads the logs.
    _make_dir(layout.log_dir, 0o700)
    # The munge socket directory must be 755: clients of every user connect to it.
    _make_dir(layout.munge_dir)
    if not layout.munge_key.exists():
        result = _run(["mungekey", "-c", "-k", str(layout.munge_key)])
        if result.returncode != 0:
            raise SandboxError(f"mungekey failed: {_last_line(result.stderr)}")
    os.chmod(layout.munge_key, 0o600)
    # Fake GPUs: gres.conf needs a File= per GPU; symlinks to /dev/null do.
    _make_dir(layout.fakegpu_dir)
    for index in range(max(site.gpus_per_node for site in SANDBOX_SITES)):
        gpu = layout.fake_gpu(index)
        if not gpu.is_symlink():
            gpu.symlink_to("/dev/null")
    for site in SANDBOX_SITES:
        _make_dir(layout.slurm_conf(site).parent)
        _make_cluster_state_dirs(layout, site)
        conf = render_slurm_conf(site, layout, hostname=hostname, plugin_dir=plugin_dir)
        _write_file(layout.slurm_conf(site), conf)
        _write_file(layout.gres_conf(site), render_gres_conf(site, layout))
        _write_file(layout.cgroup_conf(site), render_cgroup_conf(site))
        _write_file(layout.jobcomp_file(site), "", 0o600)  # a fresh job history per start
    _ssh_keygen(layout.host_key, "aif-sandbox-host")
    _ssh_keygen(layout.client_key, "aif-sandbox-client")
    host_pub = layout.host_key.with_name(layout.host_key.name + ".pub").read_text()
    _write_file(layout.known_hosts, render_known_hosts(host_pub, SANDBOX_SITES))
    _write_file(layout.sshd_config, render_sshd_config(SANDBOX_SITES, layout))
    _make_dir(Path("/run/sshd"))  # sshd's privilege separation directory, else it refuses
    _write_file(layout.supervisor_plan, render_supervisor_plan(SANDBOX_SITES, layout, binaries))


def _ensure_sandbox_user(client_public_key: str, say: Progress) -> pwd.struct_passwd:
    """Create aifuser if missing and let the sandbox client key in (appending, never clobbering)."""
    entry = _user_entry(SANDBOX_USER)
    if entry is None:
        say(f"creating user {SANDBOX_USER}")
        result = _run(["useradd", "-m", "-s", "/bin/bash", SANDBOX_USER])
        if result.returncode not in (0, 9):  # 9: created meanwhile by another tool
            raise SandboxError(f"useradd {SANDBOX_USER} failed: {_last_line(result.stderr)}")
        entry = pwd.getpwnam(SANDBOX_USER)
    # With UsePAM no, sshd refuses a locked account ('!' password): '*' means no
    # password login but not locked.
    if _shadow_password(SANDBOX_USER).startswith("!"):
        result = _run(["usermod", "-p", "*", SANDBOX_USER])
        if result.returncode != 0:
            raise SandboxError(f"usermod -p '*' {SANDBOX_USER} failed: {_last_line(result.stderr)}")
    _ensure_sandbox_group(SANDBOX_USER)
    _authorize_client_key(entry, client_public_key)
    return entry


def _ensure_sandbox_group(user: str) -> None:
    """Create the sandbox group if missing and put ``user`` in it (for the jobcomp files)."""
    try:
        group = grp.getgrnam(SANDBOX_GROUP)
    except KeyError:
        result = _run(["groupadd", "--system", SANDBOX_GROUP])
        if result.returncode not in (0, 9):  # 9: created meanwhile by another tool
            raise SandboxError(f"groupadd {SANDBOX_GROUP} failed: {_last_line(result.stderr)}") from None
        group = grp.getgrnam(SANDBOX_GROUP)
    if user not in group.gr_mem:
        # New logins get the group; every sandbox session starts after this.
        result = _run(["usermod", "-a", "-G", SANDBOX_GROUP, user])
        if result.returncode != 0:
            raise SandboxError(f"usermod -a -G {SANDBOX_GROUP} {user} failed: {_last_line(result.stderr)}")


def _authorize_client_key(entry: pwd.struct_passwd, client_public_key: str) -> None:
    """Append the sandbox client key to authorized_keys unless it is there.

    Other tools share the user and add their own keys: never rewrite the file.
    """
    ssh_dir = Path(entry.pw_dir) / ".ssh"
    if not ssh_dir.is_dir():
        ssh_dir.mkdir(parents=True)
        os.chown(ssh_dir, entry.pw_uid, entry.pw_gid)
    os.chmod(ssh_dir, 0o700)  # sshd's StrictModes refuses a looser one
    authorized = ssh_dir / "authorized_keys"
    key_blob = client_public_key.split()[1]
    existing = authorized.read_text() if authorized.exists() else ""
    if not any(key_blob in line.split() for line in existing.splitlines()):
        with authorized.open("a") as out:
            if existing and not existing.endswith("\n"):
                out.write("\n")
            out.write(client_public_key.strip() + "\n")
    os.chown(authorized, entry.pw_uid, entry.pw_gid)
    os.chmod(authorized, 0o600)


def _reauthorize_client_key(layout: SandboxLayout) -> None:
    """On an `up` that finds the sandbox running: put the key back if another tool dropped it."""
    entry = _user_entry(SANDBOX_USER)
    client_pub = layout.client_key.with_name(layout.client_key.name + ".pub")
    if os.geteuid() == 0 and entry is not None and client_pub.exists():
        _authorize_client_key(entry, client_pub.read_text())


def _user_entry(user: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        return None


def _shadow_password(user: str) -> str:
    try:
        for line in Path("/etc/shadow").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user and len(fields) > 1:
                return fields[1]
    except OSError:
        pass
    return ""


def _make_datasets(entry: pwd.struct_passwd) -> None:
    """The datasets the profiles advertise, as small placeholder directories of aifuser."""
    base = Path(entry.pw_dir) / "datasets"
    for directory in [base] + [base / d.name for s in SANDBOX_SITES for d in s.datasets]:
        if not directory.is_dir():
            directory.mkdir(parents=True)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    for site in SANDBOX_SITES:
        for dataset in site.datasets:
            readme = base / dataset.name / "README"
            if not readme.exists():
                readme.write_text(
                    f"Placeholder for dataset {dataset.name} ({dataset.size} nominal,"
                    f" {dataset.sensitivity}) of the aif sandbox site {site.name}.\n"
                )
                os.chown(readme, entry.pw_uid, entry.pw_gid)


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


def _write_gateway_files(layout: SandboxLayout) -> None:
    """The site profiles and the user config that make the gateway see the sandbox sites."""
    try:
        # Files in the aif home are the user's alone (0600); only aif reads them.
        for site in SANDBOX_SITES:
            _write_file(layout.profile(site), render_profile_toml(site), 0o600)
        _write_file(layout.user_config, render_user_config_toml(SANDBOX_SITES, layout), 0o600)
    except OSError as err:
        raise SandboxError(f"cannot write the sandbox site profiles and config: {err}") from err


# --- Stopping -----------------------------------------------------------------------


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


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
