"""The sandbox supervisor: parent and reaper of every sandbox daemon.

Run as ``python -m gateway.sandbox.supervisor ROOT`` by ``manager.up``, as a
detached session leader. Why it exists: on machines whose PID 1 is not an
init (containers, this project's VMs), an exited orphan stays a zombie
forever. So the daemons must keep a live parent that reaps them, and the
processes they leave behind (slurmstepd, slurmscriptd, sshd's per-connection
children) must be reparented to it: it declares itself a child subreaper.

It reads ``ROOT/run/plan.json`` (written by ``configs.render_supervisor_plan``),
starts every daemon in the foreground as its own child, writes
``ROOT/run/supervisor.json`` (its pid, the daemons' pids, a ready flag, the
exit status of any daemon that died, the daemons stopped on request) and
reaps continuously. It restarts nothing by itself: a dead daemon shows in
``manager.status``. On SIGTERM (or SIGINT, SIGHUP) it stops every child and
descendant (TERM, a short wait, KILL), reaps them, removes its state file and
exits 0.

Tests inject faults through ``ROOT/run/supervisor.sock`` (root only): one
JSON line ``{"stop": [names]}`` or ``{"start": [names]}`` per connection,
answered by one JSON line ``{"ok": true, "pids": {...}}`` or ``{"ok": false,
"error": "..."}``. A daemon stopped this way is recorded as stopped, not as
exited, so nobody mistakes it for a crash; ``start`` runs it again with its
plan entry.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from gateway.record import Record

PR_SET_CHILD_SUBREAPER = 36
STATE_FILE = "supervisor.json"
PLAN_FILE = "plan.json"
# Relative to ROOT (the supervisor's cwd): AF_UNIX paths are limited to 107
# bytes, and ROOT may be long.
CONTROL_SOCKET = "run/supervisor.sock"
# A client that connects must send its request line within this time.
CONTROL_READ_TIMEOUT_S = 2.0
# A clean environment for the daemons: nothing of the caller's leaks into them.
DAEMON_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
WAIT_FOR_TIMEOUT_S = 10.0
# slurmd can take several seconds to exit on TERM; the sandbox keeps no state
# worth a clean shutdown, so KILL comes quickly.
TERM_GRACE_S = 2.0
KILL_GRACE_S = 2.0


class DaemonSpec(Record):
    """One daemon of the plan."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    output: Path
    wait_for: Path | None  # start the next daemon only once this path exists

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DaemonSpec:
        wait_for = data.get("wait_for")
        return cls(
            name=str(data["name"]),
            argv=tuple(str(a) for a in data["argv"]),
            env={str(k): str(v) for k, v in dict(data.get("env") or {}).items()},
            output=Path(data["output"]),
            wait_for=Path(wait_for) if wait_for else None,
        )


def read_plan(root: Path) -> list[DaemonSpec]:
    data = json.loads((root / "run" / PLAN_FILE).read_text())
    return [DaemonSpec.from_json(p) for p in data["processes"]]


def become_subreaper() -> None:
    """Orphaned descendants get reparented to us instead of to PID 1."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def child_pids(parent: int) -> list[int]:
    """PIDs whose parent is ``parent`` (read from /proc; zombies included)."""
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The comm field may contain spaces and parentheses: split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent:
            found.append(int(entry))
    return found


def descendants(parent: int) -> list[int]:
    """Every descendant of ``parent`` (zombies included), parents before children."""
    order: list[int] = []
    frontier = [parent]
    while frontier:
        nxt: list[int] = []
        for pid in frontier:
            kids = child_pids(pid)
            order.extend(kids)
            nxt.extend(kids)
        frontier = nxt
    return order


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class Supervisor:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_path = root / "run" / STATE_FILE
        self.log = (root / "log" / "supervisor.log").open("a", buffering=1)
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.pid_to_name: dict[int, str] = {}
        self.exited: dict[str, int] = {}
        # Daemons stopped on request (fault injection): down, but not failed.
        self.stopped: set[str] = set()
        self.plan: list[DaemonSpec] = []
        self.control: socket.socket | None = None
        self.ready = False
        self.stopping = False
        # Signals only write a byte to this pipe; the main loop select()s on it.
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)

    def say(self, message: str) -> None:
        self.log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{os.getpid()}] {message}\n")

    # --- signals and reaping ------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_stop_signal)
        # A Python handler (even a no-op) is needed for SIGCHLD to reach the wakeup fd.
        signal.signal(signal.SIGCHLD, lambda _s, _f: None)

    def _on_stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def reap(self) -> None:
        """Collect every exited child, ours or adopted, without blocking."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            name = self.pid_to_name.pop(pid, None)
            if name is None:
                continue  # an adopted orphan (slurmstepd, an sshd session...)
            proc = self.children.get(name)
            if proc is not None:
                proc.returncode = code  # so Popen never waits for it again
            if name in self.stopped:
                self.say(f"{name} (pid {pid}) stopped on request ({code})")
                continue
            self.exited[name] = code
            if not self.stopping:
                self.say(f"{name} (pid {pid}) exited with {code}; not restarted")
                self.write_state()

    def sleep(self, seconds: float) -> None:
        """Wait up to ``seconds`` for a signal, then reap."""
        with contextlib.suppress(InterruptedError):
            select.select([self.wake_r], [], [], seconds)
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 512):
                pass
        self.reap()

    # --- state file -----------------------------------------------------------

    def write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "root": str(self.root),
            "ready": self.ready,
            "children": {
                name: proc.pid
                for name, proc in self.children.items()
                if name not in self.exited and name not in self.stopped
            },
            "exited": dict(self.exited),
            "stopped": sorted(self.stopped),
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_path)

    # --- starting and stopping ------------------------------------------------

    def start(self, spec: DaemonSpec) -> None:
        self.stopped.discard(spec.name)
        self.exited.pop(spec.name, None)
        try:
            with spec.output.open("ab") as out:
                proc = subprocess.Popen(
                    list(spec.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**DAEMON_ENV, **spec.env},
                    cwd=self.root,
                    close_fds=True,
                )
        except OSError as err:
            # Shown by status like any dead daemon (127: the shell's "cannot run").
            self.say(f"cannot start {spec.name}: {err}")
            with contextlib.suppress(OSError), spec.output.open("a") as out:
                out.write(f"cannot start: {err}\n")
            self.exited[spec.name] = 127
            self.write_state()
            return
        self.children[spec.name] = proc
        self.pid_to_name[proc.pid] = spec.name
        self.say(f"started {spec.name} (pid {proc.pid}): {' '.join(spec.argv)}")
        self.write_state()
        if spec.wait_for is not None:
            deadline = time.monotonic() + WAIT_FOR_TIMEOUT_S
            while not spec.wait_for.exists() and not self.stopping:
                if spec.name in self.exited or time.monotonic() > deadline:
                    self.say(f"{spec.name}: {spec.wait_for} did not appear; going on")
                    break
                self.sleep(0.02)

    def running_children(self) -> list[int]:
        return [p.pid for n, p in self.children.items() if n not in self.exited and n not in self.stopped]

    # --- fault injection: stop and start single daemons on request --------------

    def open_control(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(CONTROL_SOCKET)
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o077)  # root only from the first instant, not after a chmod
        try:
            control.bind(CONTROL_SOCKET)
        finally:
            os.umask(old_umask)
        control.listen(8)
        control.setblocking(False)
        self.control = control

    def serve(self, seconds: float) -> None:
        """Like ``sleep``, but also answer one control request if one comes."""
        if self.control is None:
            self.sleep(seconds)
            return
        with contextlib.suppress(InterruptedError):
            ready, _, _ = select.select([self.wake_r, self.control.fileno()], [], [], seconds)
            if self.control.fileno() in ready:
                with contextlib.suppress(BlockingIOError):
                    conn, _ = self.control.accept()
                    with conn:
                        self.answer(conn)
        self.sleep(0)

    def answer(self, conn: socket.socket) -> None:
        conn.setblocking(True)
        conn.settimeout(CONTROL_READ_TIMEOUT_S)
        try:
            raw = b""
            while not raw.endswith(b"\n") and len(raw) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                raw += chunk
            request = json.loads(raw)
            reply = self.handle(request)
        except (OSError, ValueError) as err:
            reply = {"ok": False, "error": f"bad request: {err}"}
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(reply).encode() + b"\n")

    def handle(self, request: object) -> dict[str, Any]:
        specs = {spec.name: spec for spec in self.plan}
        bad = {"ok": False, "error": f'expected {{"stop" or "start": [names]}}, got {request!r}'}
        if not isinstance(request, dict) or len(request) != 1:
            return bad
        ((action, names),) = request.items()
        if action not in ("stop", "start") or not isinstance(names, list):
            return bad
        unknown = [name for name in names if name not in specs]
        if unknown:
            return {"ok": False, "error": f"no such daemon: {', '.join(map(str, unknown))}"}
        if action == "stop":
            return self.stop_daemons(names)
        return self.start_daemons([specs[name] for name in names])

    def is_running(self, name: str) -> bool:
        return name in self.children and name not in self.exited and name not in self.stopped

    def stop_daemons(self, names: list[str]) -> dict[str, Any]:
        """Stop these daemons (TERM, then KILL) and record them as stopped, not exited."""
        pids = [self.children[name].pid for name in names if self.is_running(name)]
        for name in names:
            self.stopped.add(name)
            self.exited.pop(name, None)  # one that had died is now down on purpose
        self.say(f"stopping on request: {', '.join(names)}")
        self.terminate(pids)
        left = [pid for pid in pids if pid in self.pid_to_name]
        self.write_state()
        if left:
            return {"ok": False, "error": f"pids {left} survived SIGKILL"}
        return {"ok": True, "pids": {}}

    def start_daemons(self, specs: list[DaemonSpec]) -> dict[str, Any]:
        """(Re)start these daemons from their plan entries, in the order given."""
        for spec in specs:
            if not self.is_running(spec.name):
                self.say(f"starting on request: {spec.name}")
                self.start(spec)
        failed = {spec.name: self.exited[spec.name] for spec in specs if spec.name in self.exited}
        if failed:
            return {"ok": False, "error": f"exited at once: {failed}"}
        return {"ok": True, "pids": {spec.name: self.children[spec.name].pid for spec in specs}}

    def wait_gone(self, pids: list[int], seconds: float) -> list[int]:
        """Reap until none of ``pids`` is left or time is up; returns those left."""
        deadline = time.monotonic() + seconds
        left = pids
        while True:
            self.reap()
            left = [pid for pid in left if pid in self.pid_to_name or _alive(pid)]
            if not left or time.monotonic() > deadline:
                return left
            self.sleep(0.05)

    def terminate(self, pids: list[int]) -> None:
        """TERM, a short wait, then KILL; reaped either way."""
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        left = self.wait_gone(pids, TERM_GRACE_S)
        for pid in left:
            self.say(f"pid {pid} ignored SIGTERM: SIGKILL")
            _signal(pid, signal.SIGKILL)
        self.wait_gone(left, KILL_GRACE_S)

    def stop_all(self) -> None:
        self.stopping = True
        # Daemons the others waited for at start (munged) may still be needed
        # while the others stop: they go last.
        last = [
            self.children[spec.name].pid
            for spec in self.plan
            if spec.wait_for is not None and self.is_running(spec.name)
        ]
        first = [pid for pid in self.running_children() if pid not in last]
        self.terminate(first)
        # What is left besides those: adopted orphans (slurmstepd and the jobs
        # below it, sshd sessions, slurmscriptd) and their own children. They
        # are killed outright: slurmstepd ignores SIGTERM, and sandbox jobs
        # have nothing to save.
        stray = [pid for pid in descendants(os.getpid()) if pid not in last]
        for pid in stray:
            _signal(pid, signal.SIGKILL)
        self.wait_gone(stray, KILL_GRACE_S)
        if last:
            self.terminate(last)
        # Nothing should remain; whatever does is killed outright, and every
        # child is reaped before we exit (else it would become a zombie of PID 1).
        deadline = time.monotonic() + KILL_GRACE_S
        while True:
            self.reap()
            kids = child_pids(os.getpid())
            if not kids or time.monotonic() > deadline:
                break
            for pid in descendants(os.getpid()):
                _signal(pid, signal.SIGKILL)
            self.sleep(0.05)

    def run(self) -> int:
        become_subreaper()
        self.install_signal_handlers()
        self.say(f"supervisor up for {self.root}")
        self.write_state()
        try:
            self.plan = read_plan(self.root)
            for spec in self.plan:
                if self.stopping:
                    break
                self.start(spec)
            if not self.stopping:
                self.open_control()
                self.ready = True
                self.write_state()
                self.say("all daemons started")
            while not self.stopping:
                self.serve(1.0)
            self.say("stopping")
        finally:
            if self.control is not None:
                self.control.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(CONTROL_SOCKET)
            # Even after an unexpected error: never leave daemons without their reaper.
            self.stop_all()
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
            self.say("stopped")
        return 0


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m gateway.sandbox.supervisor ROOT", file=sys.stderr)
        return 2
    return Supervisor(Path(argv[0]).resolve()).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
