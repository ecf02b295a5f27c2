"""Run commands on this machine: for aif used on a Slurm login node itself.

Also home of the small file-copy vocabulary (``TreeEntry``, ``Progress``)
shared by every transport, so ``aif fetch`` works the same locally and over
SSH.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from gateway.errors import ConnectionLost, SiteUnreachable
from gateway.transports.base import (
    DEFAULT_TIMEOUT,
    CommandHook,
    CommandResult,
    Progress,
    describe_argv,
    start_command,
)

_COPY_CHUNK = 1024 * 1024


class TreeEntry(NamedTuple):
    """One entry below a directory being fetched; ``relpath`` uses ``/``."""

    relpath: str
    size: int
    is_dir: bool


def decode_output(data: bytes) -> str:
    # Slurm and shells print UTF-8 (or ASCII); a stray byte must never turn a
    # finished command into a crash, so undecodable bytes become U+FFFD.
    return data.decode("utf-8", errors="replace")


def safe_name(name: str) -> bool:
    """Whether a directory entry name can be joined below a local directory.

    A remote server picks these names; refusing separators and dot names
    keeps a hostile listing from writing outside the destination.
    """
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name


def copy_tree_entries(
    entries: Sequence[TreeEntry],
    local_dir: Path,
    copy_file: Callable[[str, Path, Progress | None], int],
    progress: Progress | None,
) -> list[TreeEntry]:
    """Create the directories, then copy every file, reporting overall progress.

    ``copy_file(relpath, destination, progress)`` copies one file; its own
    per-file progress is turned into progress over the whole tree.
    """
    local_dir.mkdir(parents=True, exist_ok=True)
    total = sum(entry.size for entry in entries if not entry.is_dir)
    done = 0
    if progress is not None:
        progress(0, total)
    for entry in entries:
        destination = local_dir.joinpath(*entry.relpath.split("/"))
        if entry.is_dir:
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        file_progress: Progress | None = None
        if progress is not None:
            base = done

            def file_progress(file_done: int, _file_total: int, base: int = base) -> None:
                progress(base + file_done, total)

        done += copy_file(entry.relpath, destination, file_progress)
        if progress is not None:
            progress(done, total)
    return list(entries)


def atomic_destination(local_path: Path) -> tuple[int, Path]:
    """A temp file beside ``local_path``, so a broken copy never looks complete."""
    local_path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{local_path.name}.", suffix=".part", dir=local_path.parent)
    return fd, Path(name)


class LocalTransport:
    """Runs commands as subprocesses of this process (no shell ever)."""

    def __init__(
        self,
        site: str,
        env: Mapping[str, str] | None = None,
        on_command: CommandHook | None = None,
    ) -> None:
        self.site = site
        # Overrides such as SLURM_CONF are merged over our own environment,
        # so PATH, HOME and munge's settings still reach the Slurm clients.
        self._env: dict[str, str] | None = {**os.environ, **env} if env else None
        self.on_command = on_command

    def run(
        self,
        argv: Sequence[str],
        stdin: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> CommandResult:
        command = start_command(self.site, argv, self.on_command)
        try:
            # A new session makes the command lead its own process group, so a
            # timeout can kill whatever it started too; otherwise a grandchild
            # holding the pipes open would make us wait forever.
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise SiteUnreachable(
                f"site {self.site}: {command[0]} not found: is this a Slurm login node?"
            ) from None
        except PermissionError:
            raise SiteUnreachable(
                f"site {self.site}: {command[0]} cannot be run here (permission denied)"
            ) from None
        except OSError as exc:
            raise SiteUnreachable(
                f"site {self.site}: cannot run {command[0]}: {exc.strerror or exc}"
            ) from None
        try:
            stdout, stderr = process.communicate(input=stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            process.communicate()
            # It may have taken effect before it was killed (sbatch may have
            # submitted): callers treat this like a dropped connection.
            raise ConnectionLost(
                f"site {self.site}: command timed out after {timeout:g} s: {describe_argv(command)}"
            ) from None
        except BaseException:
            _kill_group(process)
            process.wait()
            raise
        return CommandResult(
            argv=command,
            returncode=process.returncode,
            stdout=decode_output(stdout),
            stderr=decode_output(stderr),
        )

    def read_file(self, remote_path: str, offset: int = 0) -> bytes:
        """The file from byte ``offset`` on (for following a growing log).

        FileNotFoundError / PermissionError pass through.
        """
        with open(remote_path, "rb") as reader:
            reader.seek(offset)
            return reader.read()

    def get_file(self, remote_path: str, local_path: str | Path, progress: Progress | None = None) -> int:
        """Copy one file; returns its size. The copy appears only when complete."""
        source = Path(remote_path)
        destination = Path(local_path)
        total = source.stat().st_size
        fd, partial = atomic_destination(destination)
        done = 0
        try:
            with source.open("rb") as reader, os.fdopen(fd, "wb") as writer:
                if progress is not None:
                    progress(0, total)
                while chunk := reader.read(_COPY_CHUNK):
                    writer.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
            shutil.copymode(source, partial)
            os.replace(partial, destination)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return done

    def list_tree(self, remote_dir: str) -> list[TreeEntry]:
        """Every directory and regular file below ``remote_dir``, parents first.

        Symlinks to files are followed; symlinks to directories are skipped,
        so a link loop in a job's output cannot make a fetch run forever.
        """
        root = Path(remote_dir)
        if not root.is_dir():
            raise NotADirectoryError(f"{remote_dir} is not a directory")
        entries: list[TreeEntry] = []
        self._walk(root, "", entries)
        return entries

    def _walk(self, directory: Path, prefix: str, entries: list[TreeEntry]) -> None:
        for child in sorted(os.scandir(directory), key=lambda item: item.name):
            relpath = f"{prefix}{child.name}"
            if child.is_symlink():
                try:
                    target = os.stat(child.path)
                except OSError:
                    continue  # a dangling link has nothing to copy
                if stat.S_ISREG(target.st_mode):
                    entries.append(TreeEntry(relpath, target.st_size, False))
                continue
            if child.is_dir(follow_symlinks=False):
                entries.append(TreeEntry(relpath, 0, True))
                self._walk(Path(child.path), f"{relpath}/", entries)
            elif child.is_file(follow_symlinks=False):
                entries.append(TreeEntry(relpath, child.stat(follow_symlinks=False).st_size, False))

    def get_tree(
        self, remote_dir: str, local_dir: str | Path, progress: Progress | None = None
    ) -> list[TreeEntry]:
        """Copy a whole directory below ``local_dir``; returns what was copied."""
        root = Path(remote_dir)

        def copy_file(relpath: str, destination: Path, file_progress: Progress | None) -> int:
            return self.get_file(str(root / relpath), destination, file_progress)

        return copy_tree_entries(self.list_tree(remote_dir), Path(local_dir), copy_file, progress)

    def close(self) -> None:
        """Nothing stays open between commands."""


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
