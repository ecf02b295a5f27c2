"""$AIF_HOME: created private, files in it 0600 whatever the umask, a loose home warned about once,
and a home that cannot be written is one clear error (exit 1), never a traceback."""

from __future__ import annotations

import errno
import getpass
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gateway.cli import main
from gateway.errors import EXIT_INTERNAL, AifError, ConfigError, HomeUnusable
from gateway.home import ensure_home, local_user, loose_home_warning
from gateway.ledger import Ledger

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "tests" / "data" / "specs" / "gpu-example.toml"
HASH = "0" * 64


def aif(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The loosest umask: whatever aif creates must still come out private."""
    old = os.umask(0)
    yield
    os.umask(old)


# -- creating the home and the ledger -------------------------------------------------------


def test_a_new_home_is_0700_and_the_ledger_files_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loose_umask: None
) -> None:
    home = tmp_path / "new" / "home"
    monkeypatch.setenv("AIF_HOME", str(home))
    with Ledger() as ledger:
        ledger.record_invalid(spec_path="x.toml", spec_hash=HASH, message="m")
        # While a connection is open, WAL mode keeps the -wal and -shm files next to the ledger.
        written = sorted(p.name for p in home.iterdir())
        assert written == ["ledger.sqlite", "ledger.sqlite-shm", "ledger.sqlite-wal"]
        assert {p.name: mode(p) for p in home.iterdir()} == dict.fromkeys(written, 0o600)
    assert mode(home) == 0o700


def test_an_existing_loose_ledger_is_made_0600(aif_home: Path, loose_umask: None) -> None:
    ledger_file = aif_home / "ledger.sqlite"
    with Ledger():
        pass
    ledger_file.chmod(0o644)
    with Ledger():
        assert mode(ledger_file) == 0o600


def test_ensure_home_keeps_an_existing_home_as_it_is(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    assert ensure_home(home) == home
    assert mode(home) == 0o755


# -- a home that cannot be written ------------------------------------------------------------


def home_below_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """As root, chmod does not stop writes: a home whose parent is a regular file cannot be created."""
    blocker = tmp_path / "plain-file"
    blocker.write_text("not a directory\n")
    home = blocker / "aif"
    monkeypatch.setenv("AIF_HOME", str(home))
    return home


@pytest.mark.parametrize(
    "args",
    [
        ("submit", str(SPEC), "--site", "lumi"),
        ("submit", "/nonexistent/spec.toml"),
        ("status",),
        ("list",),
        ("logs", "aif-abcdefghij"),
    ],
)
def test_a_home_that_cannot_be_created_is_one_line_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    home = home_below_a_file(tmp_path, monkeypatch)
    result = aif(*args)
    assert result.exit_code == EXIT_INTERNAL, result.output
    assert "Traceback" not in result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("aif: error: ")
    assert f"cannot create the aif home {home}: {home.parent} is not a directory; " in result.stderr
    assert "set AIF_HOME" in result.stderr


def test_a_home_that_is_a_file_is_one_line_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.write_text("")
    monkeypatch.setenv("AIF_HOME", str(home))
    result = aif("list")
    assert result.exit_code == EXIT_INTERNAL
    assert f"aif: error: the aif home {home} is not a directory" in result.stderr


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_creating_the_home_maps_every_os_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(HomeUnusable) as info:
        ensure_home(tmp_path / "home")
    assert info.value.exit_code == EXIT_INTERNAL
    assert os.strerror(code) in info.value.message


def test_a_read_only_ledger_is_one_clear_error_exit_1(aif_home: Path) -> None:
    with Ledger() as ledger:
        # What a read-only file or file system does to every write (root ignores chmod).
        ledger._conn.execute("PRAGMA query_only = ON")
        with pytest.raises(HomeUnusable) as info:
            ledger.record_invalid(spec_path="x.toml", spec_hash=HASH, message="m")
    message = info.value.message
    assert info.value.exit_code == EXIT_INTERNAL
    assert (
        f"cannot write the ledger {aif_home / 'ledger.sqlite'}: attempt to write a readonly database"
        in message
    )
    assert "writable" in message and "AIF_HOME" in message


def test_a_full_disk_is_exit_1_not_invalid_input(aif_home: Path) -> None:
    with Ledger() as ledger:
        pages = ledger._conn.execute("PRAGMA page_count").fetchone()[0]
        # What a full disk does to sqlite: it cannot grow the file.
        ledger._conn.execute(f"PRAGMA max_page_count = {pages + 1}")
        with pytest.raises(AifError) as info:
            for _ in range(10_000):
                ledger.record_invalid(spec_path="x" * 500, spec_hash=HASH, message="m" * 500)
    assert not isinstance(info.value, ConfigError)
    assert info.value.exit_code == EXIT_INTERNAL
    assert "database or disk is full" in info.value.message and "free space" in info.value.message


def test_a_damaged_ledger_is_invalid_input_exit_3(aif_home: Path) -> None:
    with Ledger() as ledger:
        for _ in range(200):
            ledger.record_invalid(spec_path="x" * 500, spec_hash=HASH, message="m")
    path = aif_home / "ledger.sqlite"
    data = bytearray(path.read_bytes())
    page = 4096
    data[2 * page : len(data)] = b"\xff" * (len(data) - 2 * page)  # every page past the schema
    path.write_bytes(bytes(data))
    result = aif("list", "--all")
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith(f"aif: error: cannot use the ledger {path}: ")
    assert result.stderr.count("\n") == 1


def test_the_sqlite_error_mapping(tmp_path: Path) -> None:
    from gateway.ledger import ledger_error

    path = tmp_path / "ledger.sqlite"

    def error(code: int, text: str) -> sqlite3.Error:
        exc = sqlite3.OperationalError(text)
        exc.sqlite_errorcode = code  # type: ignore[attr-defined]
        return exc

    assert (
        type(ledger_error(path, error(sqlite3.SQLITE_READONLY, "attempt to write a readonly database")))
        is HomeUnusable
    )
    assert (
        type(ledger_error(path, error(sqlite3.SQLITE_CANTOPEN, "unable to open database file")))
        is HomeUnusable
    )
    assert type(ledger_error(path, error(sqlite3.SQLITE_FULL, "database or disk is full"))) is HomeUnusable
    assert type(ledger_error(path, error(sqlite3.SQLITE_IOERR, "disk I/O error"))) is HomeUnusable
    assert (
        type(ledger_error(path, error(sqlite3.SQLITE_CORRUPT, "database disk image is malformed")))
        is ConfigError
    )
    assert type(ledger_error(path, error(sqlite3.SQLITE_NOTADB, "file is not a database"))) is ConfigError
    assert ledger_error(path, error(sqlite3.SQLITE_BUSY, "database is locked")).exit_code == EXIT_INTERNAL
    # Python 3.10 has no sqlite_errorcode: the message decides.
    assert (
        type(ledger_error(path, sqlite3.OperationalError("attempt to write a readonly database")))
        is HomeUnusable
    )


# -- the warning about a home others can read ----------------------------------------------------


def test_a_loose_home_is_warned_about_once_per_mode(aif_home: Path) -> None:
    aif_home.chmod(0o755)
    first = aif("list")
    assert first.exit_code == 0
    assert first.stderr == (
        f"aif: warning: {aif_home} can be read by group and others (mode 755): "
        f"other users can read your ledger and config; run: chmod 700 {aif_home}\n"
    )
    assert aif("list").stderr == ""
    aif_home.chmod(0o750)
    assert "can be read by group (mode 750)" in aif("list").stderr
    assert aif("list").stderr == ""
    aif_home.chmod(0o700)
    assert aif("list").stderr == ""
    assert loose_home_warning() is None


def test_the_warning_marker_is_private(aif_home: Path, loose_umask: None) -> None:
    aif_home.chmod(0o755)
    assert loose_home_warning() is not None
    [marker] = [p for p in aif_home.iterdir() if p.name.startswith(".")]
    assert mode(marker) == 0o600


def test_a_missing_home_is_not_warned_about(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIF_HOME", str(tmp_path / "absent"))
    assert loose_home_warning() is None
    assert not (tmp_path / "absent").exists()


def test_the_sandbox_symlink_is_never_followed(aif_home: Path, tmp_path: Path) -> None:
    """The sandbox's state (another user's daemons read it) may live elsewhere behind a symlink."""
    elsewhere = tmp_path / "var-lib-aif-sandbox"
    elsewhere.mkdir()
    elsewhere.chmod(0o755)
    (aif_home / "sandbox").symlink_to(elsewhere, target_is_directory=True)
    assert loose_home_warning() is None
    with Ledger():
        pass
    assert mode(elsewhere) == 0o755


def test_a_home_holding_the_sandbox_gets_advice_that_keeps_it_working(aif_home: Path) -> None:
    aif_home.chmod(0o755)
    (aif_home / "sandbox").mkdir()
    warning = loose_home_warning()
    assert warning is not None
    assert f"run: chmod 711 {aif_home}" in warning and "sandbox" in warning


def test_what_the_sandbox_writes_into_the_home_is_private(tmp_path: Path, loose_umask: None) -> None:
    from gateway.sandbox import manager
    from gateway.sandbox.configs import SandboxLayout

    home = tmp_path / "home"
    state = tmp_path / "var-lib-aif-sandbox"
    state.mkdir()
    state.chmod(0o755)
    layout = SandboxLayout(home, real_root=state)
    manager._link_state_dir(layout)
    manager._write_gateway_files(layout)
    assert mode(home) == 0o700
    written = [p for p in home.rglob("*") if p.is_file() and not p.is_symlink()]
    assert {p.name for p in written} >= {"sandbox.toml", "sandbox-north.toml"}
    assert {mode(p) for p in written} == {0o600}
    assert (home / "sandbox").is_symlink() and mode(state) == 0o755


def test_a_home_for_the_sandbox_state_can_be_passed_but_not_read(tmp_path: Path, loose_umask: None) -> None:
    """`aif sandbox up` keeps its state in a new home only if others can pass through it (0711):
    that is not a mode to warn about."""
    home = ensure_home(tmp_path / "home", mode=0o711)
    assert mode(home) == 0o711
    assert loose_home_warning(home) is None


# -- the local user's name -----------------------------------------------------------------

LOGIN_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")


@pytest.mark.parametrize(
    "set_ones", [(), ("USERNAME",), ("LNAME", "USER"), ("LOGNAME", "USERNAME"), ("USER",)]
)
def test_the_local_user_is_getpass_s(monkeypatch: pytest.MonkeyPatch, set_ones: tuple[str, ...]) -> None:
    for variable in LOGIN_VARIABLES:
        if variable in set_ones:
            monkeypatch.setenv(variable, f"name-from-{variable}")
        else:
            monkeypatch.delenv(variable, raising=False)
    if "LNAME" not in set_ones:
        monkeypatch.setenv("LNAME", "")  # set but empty: skipped, as getpass skips it
    assert local_user() == getpass.getuser()


def test_a_user_the_password_database_does_not_know_gets_getpass_s_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in LOGIN_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(os, "getuid", lambda: 2**31 - 7)  # no such user
    with pytest.raises(Exception) as ours:
        local_user()
    with pytest.raises(Exception) as theirs:
        getpass.getuser()
    assert type(ours.value) is type(theirs.value) and str(ours.value) == str(theirs.value)
