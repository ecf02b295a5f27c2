"""Where the sandbox's state lives, and the small helpers every part of it shares.

The layout (``AIF_HOME/sandbox``, or the shared state directory behind that
name when the sandbox user cannot enter AIF_HOME), the lock that serializes
``up``, ``down`` and the fault injection, files written atomically with an
exact mode, commands run with the system PATH, what /proc says about the
sandbox's processes, and the supervisor's state file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from gateway.home import aif_home, ensure_home
from gateway.record import Record
from gateway.sandbox.configs import SandboxLayout
from gateway.sandbox.sites import SANDBOX_USER

Progress = Callable[[str], None]
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DOWN_TIMEOUT_S = 20.0  # above the supervisor's own worst case (TERM/KILL rounds)
POLL_S = 0.05


# --- Layout and small helpers -------------------------------------------------------


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


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


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


def _user_entry(user: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        return None


# --- /proc --------------------------------------------------------------------------


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


# --- Supervisor state ---------------------------------------------------------------


class _SupervisorState(Record):
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
