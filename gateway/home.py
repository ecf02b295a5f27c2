"""Where the user's own things live: $AIF_HOME (default ~/.aif), private to the user.

The ledger says what a user ran where and the config names their accounts:
aif creates the home with mode 0700 and every file it writes there with mode
0600, whatever the umask. An existing home is never changed: when group or
others can read it, :func:`loose_home_warning` says so (once per mode).
Nothing here follows the ``sandbox`` symlink in the home: the sandbox's
state belongs to its daemons and keeps its own modes.

The home is also given as text (:func:`aif_home_text`): the commands that
only read files (``aif render``, the main callback's home check) do without
pathlib (see :mod:`gateway.pathtext`).
"""

from __future__ import annotations

import contextlib
import os
import stat
from typing import TYPE_CHECKING

from gateway.errors import HomeUnusable
from gateway.pathtext import child_text, expand_user_text, path_text

if TYPE_CHECKING:
    from pathlib import Path

HOME_MODE = 0o700
FILE_MODE = 0o600
# Remembers the mode of a loose home that was already warned about (see loose_home_warning).
MODE_WARNED_FILE = ".mode-warned"


def aif_home_text() -> str:
    """``str(aif_home())``: the user's aif directory as text; not created here."""
    value = os.environ.get("AIF_HOME")
    return expand_user_text(value) if value else child_text(expand_user_text("~"), ".aif")


def local_user() -> str:
    """``getpass.getuser()``: the login variables, then the password database.

    Without importing getpass, which imports termios; where the user has no
    entry in the password database, getpass raises its own error.
    """
    for variable in ("LOGNAME", "USER", "LNAME", "USERNAME"):  # getpass.getuser's, in its order
        user = os.environ.get(variable)
        if user:
            return user
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        import getpass

        return getpass.getuser()


def aif_home() -> Path:
    """The user's aif directory; not created here."""
    from pathlib import Path  # not at start-up: the commands that only read use aif_home_text

    return Path(aif_home_text())


def ensure_home(directory: Path | None = None, *, mode: int = HOME_MODE) -> Path:
    """Create the aif home (or another directory for aif's own files) with mode 0700.

    Its missing parents are created as usual; an existing directory is left as
    it is. ``mode`` is for the sandbox alone, whose login user must pass
    through a home that holds its state (0711). Every failure is one
    :class:`HomeUnusable` naming the directory.
    """
    directory = directory if directory is not None else aif_home()
    if directory.is_dir():
        return directory
    # Checked again: another aif process may have created it since is_dir() above.
    if (directory.exists() or directory.is_symlink()) and not directory.is_dir():
        raise HomeUnusable(
            f"the aif home {directory} is not a directory; remove it, or set AIF_HOME to a directory"
        )
    if directory.is_dir():
        return directory
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:
            if not directory.is_dir():
                raise
            return directory  # another aif process made it first
        # mkdir's mode is filtered by the umask, which may also take bits the owner needs.
        os.chmod(directory, mode)
    except OSError as exc:
        blocker = next((p for p in directory.parents if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is not a directory" if blocker is not None else exc.strerror or str(exc)
        raise HomeUnusable(
            f"cannot create the aif home {directory}: {why}; "
            "make its parent writable, or set AIF_HOME to a directory you can write"
        ) from None
    return directory


def ensure_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if missing; make an existing file of ours 0600.

    A symlink (or anything not a regular file) is left alone: modes are never
    changed through a link.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return
    except OSError as exc:
        if path.is_symlink():
            return
        raise HomeUnusable(
            f"cannot create {path}: {exc.strerror or exc}; make {path.parent} writable by you, "
            "or set AIF_HOME to a directory you can write"
        ) from None
    try:
        make_private(path, fd)
    finally:
        os.close(fd)


def make_private(path: Path, fd: int | None = None) -> None:
    """Give a regular file of ours that others may read mode 0600 (never through a symlink)."""
    try:
        info = os.fstat(fd) if fd is not None else path.lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            return
        if stat.S_IMODE(info.st_mode) != FILE_MODE:
            if fd is not None:
                os.fchmod(fd, FILE_MODE)
            else:
                os.chmod(path, FILE_MODE)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise HomeUnusable(f"cannot make {path} private (mode 600): {exc.strerror or exc}") from None


def write_private_text(path: str | Path, text: str) -> None:
    """Write ``path`` whole, with mode 0600: readers see the old file or the new one."""
    directory, name = os.path.split(path_text(path))
    partial = os.path.join(directory, f".{name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), FILE_MODE)
        out.write(text)
    os.replace(partial, path)


def loose_home_warning(home: str | Path | None = None) -> str | None:
    """What to tell the user when group or others can read or write the home; else None.

    Said once per mode: the mode warned about is remembered in
    ``.mode-warned`` in the home, so the warning comes back only when the
    mode changes to another loose one (or when that file cannot be written).
    """
    home = path_text(home) if home is not None else aif_home_text()
    try:
        info = os.stat(home)  # $AIF_HOME itself may be a link to the real directory
    except OSError:
        return None
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode) or not mode & 0o066:
        return None
    marker = child_text(home, MODE_WARNED_FILE)
    shown = f"{mode:o}"
    try:
        with open(marker, encoding="utf-8") as remembered:
            if remembered.read().strip() == shown:
                return None
    except (OSError, UnicodeDecodeError):
        pass
    # In a read-only home the warning is repeated, which is better than silence.
    with contextlib.suppress(OSError):
        write_private_text(marker, shown + "\n")
    who = " and ".join(w for w, bits in (("group", 0o060), ("others", 0o006)) if mode & bits)
    can = "read" if mode & 0o044 else "change"
    advice = f"run: chmod 700 {home}"
    if _holds_sandbox_state(home):
        advice = (
            f"run: chmod 711 {home} (not 700: the sandbox keeps its state in {child_text(home, 'sandbox')} "
            "and its login user must pass through)"
        )
    return (
        f"{home} can be {'read' if can == 'read' else 'changed'} by {who} (mode {shown}): "
        f"other users can {can} your ledger and config; {advice}"
    )


def _holds_sandbox_state(home: str) -> bool:
    """True when the sandbox's state is a real directory in the home (lstat: a symlink is not followed)."""
    try:
        return stat.S_ISDIR(os.lstat(child_text(home, "sandbox")).st_mode)
    except OSError:
        return False
