"""Transports without a network: the fake, local subprocesses, quoting, and
SshTransport's logic and error mapping with paramiko mocked out."""

from __future__ import annotations

import datetime as dt
import io
import os
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from pytest_mock import MockerFixture

from gateway.errors import ConfigError, ConnectionLost, HostKeyRejected, SiteUnreachable
from gateway.transports import ssh
from gateway.transports.base import CommandResult
from gateway.transports.fake import FakeCall, FakeTransport, UnexpectedCommand
from gateway.transports.local import LocalTransport, TreeEntry
from gateway.transports.ssh import (
    ResolvedEndpoint,
    SshTarget,
    SshTransport,
    close_all,
    connection_for,
    resolve_route,
)
from gateway.transports.ssh import connection as ssh_connection
from gateway.transports.ssh import transport as ssh_transport

HOSTILE = [
    "$(touch {marker})",
    "`touch {marker}`",
    "; touch {marker}",
    "| touch {marker}",
    "> {marker}",
    "'",
    '"',
    "a\nb; touch {marker}",
    "$HOME ${{IFS}}",
    "*",
    "",
    "\\",
    "!!",
    "-n",
]


# -- FakeTransport -----------------------------------------------------------------


def test_fake_longest_prefix_wins_and_records_calls() -> None:
    fake = FakeTransport("alpha")
    fake.respond(["squeue"], stdout="all\n")
    fake.respond(["squeue", "-j", "5"], stdout="five\n")
    assert fake.run(["squeue", "-j", "5", "-h"]).stdout == "five\n"
    assert fake.run(["squeue", "-u", "me"], stdin=b"x", timeout=3).stdout == "all\n"
    assert fake.calls == [
        FakeCall(("squeue", "-j", "5", "-h"), None, 60.0),
        FakeCall(("squeue", "-u", "me"), b"x", 3),
    ]
    assert fake.commands == [("squeue", "-j", "5", "-h"), ("squeue", "-u", "me")]
    assert len(fake.calls_to(["squeue", "-u"])) == 1


def test_fake_responses_are_used_in_order_and_the_last_repeats() -> None:
    fake = FakeTransport()
    fake.respond(["squeue"], stdout="PENDING").respond(["squeue"], stdout="RUNNING")
    assert [fake.run(["squeue"]).stdout for _ in range(3)] == ["PENDING", "RUNNING", "RUNNING"]


def test_fake_handler_sees_stdin() -> None:
    fake = FakeTransport()
    fake.respond(
        ["sbatch"],
        handler=lambda call: CommandResult(call.argv, 0, f"{len(call.stdin or b'')}\n", ""),
    )
    assert fake.run(["sbatch", "--parsable"], stdin=b"#!/bin/sh\n").stdout == "10\n"


def test_fake_unscripted_command_fails_loudly_unless_defaulted() -> None:
    with pytest.raises(UnexpectedCommand, match="sinfo"):
        FakeTransport().run(["sinfo"])
    fake = FakeTransport(default=CommandResult((), 1, "", "nope"))
    result = fake.run(["sinfo"])
    assert (result.argv, result.returncode, result.stderr) == (("sinfo",), 1, "nope")


def test_fake_fail_on_nth_call_does_not_run_it() -> None:
    ran: list[str] = []
    fake = FakeTransport("beta")

    def record(call: FakeCall) -> CommandResult:
        ran.append("x")
        return CommandResult(call.argv, 0, "", "")

    fake.respond(["x"], handler=record)
    fake.fail_on_call(2)
    fake.run(["x"])
    with pytest.raises(SiteUnreachable, match="beta") as caught:
        fake.run(["x"])
    assert not isinstance(caught.value, ConnectionLost)
    fake.run(["x"])
    assert ran == ["x", "x"]
    assert [call.outcome for call in fake.calls] == ["ok", "failed", "ok"]


def test_fake_drop_after_success_runs_the_command_then_raises() -> None:
    submitted: list[bytes | None] = []
    fake = FakeTransport()

    def sbatch(call: FakeCall) -> CommandResult:
        submitted.append(call.stdin)
        return CommandResult(call.argv, 0, f"{len(submitted)}\n", "")

    fake.respond(["sbatch"], handler=sbatch)
    fake.drop_after_success(["sbatch"])
    with pytest.raises(ConnectionLost, match="may or may not have run"):
        fake.run(["sbatch", "--parsable"], stdin=b"script")
    assert fake.run(["sbatch", "--parsable"], stdin=b"script").stdout == "2\n"
    assert submitted == [b"script", b"script"]
    assert [call.outcome for call in fake.calls] == ["dropped", "ok"]


def test_fake_fail_on_call_after_running() -> None:
    fake = FakeTransport().respond([], stdout="ok")
    fake.fail_on_call(1, after_running=True)
    with pytest.raises(ConnectionLost):
        fake.run(["anything"])
    assert fake.calls[0].outcome == "dropped"


def test_fake_on_command_hook_and_files(tmp_path: Path) -> None:
    seen: list[tuple[str, tuple[str, ...]]] = []
    fake = FakeTransport("gamma", on_command=lambda site, argv: seen.append((site, tuple(argv))))
    fake.respond(["true"])
    fake.run(["true"], stdin=b"secret")
    assert seen == [("gamma", ("true",))]

    fake.files = {"/out/a.txt": b"aa", "/out/sub/b.txt": b"bbb", "/elsewhere": b"x"}
    assert fake.read_file("/out/a.txt") == b"aa"
    assert fake.read_file("/out/sub/b.txt", offset=1) == b"bb"
    with pytest.raises(FileNotFoundError):
        fake.read_file("/nope")
    assert fake.list_tree("/out") == [
        TreeEntry("a.txt", 2, False),
        TreeEntry("sub", 0, True),
        TreeEntry("sub/b.txt", 3, False),
    ]
    progress: list[tuple[int, int]] = []
    fake.get_tree("/out", tmp_path / "copy", lambda done, total: progress.append((done, total)))
    assert (tmp_path / "copy/sub/b.txt").read_bytes() == b"bbb"
    assert progress[0] == (0, 5) and progress[-1] == (5, 5)
    fake.close()
    assert fake.closed


# -- LocalTransport ----------------------------------------------------------------


def test_local_runs_argv_without_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    args = [arg.format(marker=marker) for arg in HOSTILE]
    result = LocalTransport("here").run(["printf", "%s\\0", *args])
    assert result.ok
    assert result.stdout.split("\0")[:-1] == args
    assert not marker.exists()


def test_local_stdin_exit_code_and_stderr() -> None:
    transport = LocalTransport("here")
    script = "cat; echo oops >&2; exit 3"
    result = transport.run(["sh", "-c", script], stdin=b"in\n")
    assert (result.returncode, result.stdout, result.stderr) == (3, "in\n", "oops\n")
    # No stdin means EOF at once, never the terminal.
    assert transport.run(["cat"]).stdout == ""


def test_local_env_overrides_are_merged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIF_UNIT_INHERITED", "kept")
    transport = LocalTransport("here", env={"SLURM_CONF": "/x/slurm.conf"})
    result = transport.run(["sh", "-c", 'echo "$SLURM_CONF $AIF_UNIT_INHERITED"'])
    assert result.stdout == "/x/slurm.conf kept\n"


def test_local_undecodable_output_does_not_crash() -> None:
    result = LocalTransport("here").run(["printf", "\\377ok"])
    assert result.stdout == "\ufffdok"


def test_local_unrunnable_program_is_unreachable(tmp_path: Path) -> None:
    not_a_program = tmp_path / "script"
    not_a_program.write_bytes(b"\x7fELF garbage")
    not_a_program.chmod(0o755)
    with pytest.raises(SiteUnreachable, match=f"cannot run {not_a_program}: Exec format error"):
        LocalTransport("here").run([str(not_a_program)])


def test_local_missing_program_is_unreachable() -> None:
    with pytest.raises(SiteUnreachable) as caught:
        LocalTransport("login").run(["sbatch-does-not-exist-here", "--parsable"])
    assert str(caught.value) == (
        "site login: sbatch-does-not-exist-here not found: is this a Slurm login node?"
    )
    assert caught.value.__cause__ is None


def test_local_timeout_kills_the_whole_process_group() -> None:
    transport = LocalTransport("here")
    started = time.monotonic()
    # The background sleep keeps the pipes open: only killing the group ends it.
    with pytest.raises(ConnectionLost, match=r"timed out after 0\.3 s: sh -c"):
        transport.run(["sh", "-c", "sleep 30 & sleep 30"], timeout=0.3)
    assert time.monotonic() - started < 5


def test_local_on_command_hook() -> None:
    seen: list[tuple[str, tuple[str, ...]]] = []
    transport = LocalTransport("here", on_command=lambda site, argv: seen.append((site, tuple(argv))))
    transport.run(["true"], stdin=b"secret")
    assert seen == [("here", ("true",))]


def test_local_file_helpers(tmp_path: Path) -> None:
    source = tmp_path / "job"
    (source / "sub").mkdir(parents=True)
    (source / "out.txt").write_bytes(b"x" * 3000)
    (source / "sub" / "err.txt").write_bytes(b"e")
    (source / "link").symlink_to("out.txt")
    (source / "dirlink").symlink_to("sub")
    (source / "dangling").symlink_to("nowhere")
    transport = LocalTransport("here")

    assert transport.read_file(str(source / "sub/err.txt")) == b"e"
    assert transport.read_file(str(source / "out.txt"), offset=2999) == b"x"
    assert transport.list_tree(str(source)) == [
        TreeEntry("link", 3000, False),
        TreeEntry("out.txt", 3000, False),
        TreeEntry("sub", 0, True),
        TreeEntry("sub/err.txt", 1, False),
    ]
    progress: list[tuple[int, int]] = []
    copied = transport.get_tree(
        str(source), tmp_path / "copy", lambda done, total: progress.append((done, total))
    )
    assert len(copied) == 4
    assert (tmp_path / "copy/link").read_bytes() == b"x" * 3000
    assert (tmp_path / "copy/sub/err.txt").read_bytes() == b"e"
    assert progress[0] == (0, 6001) and progress[-1] == (6001, 6001)
    assert not list((tmp_path / "copy").rglob("*.part"))
    with pytest.raises(FileNotFoundError):
        transport.get_file(str(source / "missing"), tmp_path / "missing")
    with pytest.raises(NotADirectoryError):
        transport.list_tree(str(source / "out.txt"))


# -- quoting -----------------------------------------------------------------------


def _through_shell(argv: list[str]) -> list[str]:
    """What a POSIX login shell makes of the command line SshTransport sends."""
    line = shlex.join(["printf", "%s\\0", *argv])
    out = subprocess.run(["sh", "-c", line], capture_output=True, check=True).stdout
    return out.decode("utf-8", "surrogateescape").split("\0")[:-1]


def test_quoting_survives_a_real_shell(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    args = [arg.format(marker=marker) for arg in HOSTILE]
    assert _through_shell(args) == args
    assert not marker.exists()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"])), min_size=1))
def test_quoting_round_trips_any_text(args: list[str]) -> None:
    assert _through_shell(args) == args


# -- resolving targets and ~/.ssh/config ------------------------------------------


@pytest.fixture
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Defaults such as ~/.ssh/id_ed25519 must resolve inside a temp dir.
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ssh_config"
    path.write_text(text)
    return path


def test_resolve_defaults_without_config(fake_home: Path) -> None:
    (endpoint,) = resolve_route(SshTarget("s", "login.example.org", use_ssh_config=False))
    assert endpoint.hostname == "login.example.org"
    assert endpoint.port == 22
    assert endpoint.identity_files == tuple(
        fake_home / ".ssh" / name for name in ("id_ed25519", "id_rsa", "id_ecdsa")
    )
    assert not endpoint.identity_files_explicit
    assert endpoint.known_hosts_files[0] == fake_home / ".ssh" / "known_hosts"
    assert Path("/etc/ssh/ssh_known_hosts") in endpoint.known_hosts_files
    assert endpoint.known_hosts_name == "login.example.org"


def test_resolve_alias_from_config(fake_home: Path) -> None:
    config = _config(
        fake_home,
        "Host leo\n"
        "    HostName login.leonardo.example\n"
        "    User alice\n"
        "    Port 2222\n"
        "    IdentityFile ~/.ssh/leo_key\n"
        "    UserKnownHostsFile ~/kh1 ~/kh2\n",
    )
    (endpoint,) = resolve_route(SshTarget("leonardo", "leo", ssh_config_path=config))
    assert (endpoint.name, endpoint.hostname, endpoint.port, endpoint.user) == (
        "leo",
        "login.leonardo.example",
        2222,
        "alice",
    )
    assert endpoint.identity_files == (fake_home / ".ssh/leo_key",)
    assert endpoint.known_hosts_files[:2] == (fake_home / "kh1", fake_home / "kh2")
    assert endpoint.known_hosts_name == "[login.leonardo.example]:2222"
    assert endpoint.use_agent


def test_config_include_is_expanded(fake_home: Path) -> None:
    # smallstep's `step ssh config` adds "Include ~/.step/ssh/includes".
    (fake_home / ".ssh/conf.d").mkdir(parents=True)
    (fake_home / ".ssh/conf.d/10-leo.conf").write_text("Host leo\n    HostName leo.example\n")
    (fake_home / ".step").mkdir()
    (fake_home / ".step/includes").write_text("Host *.example\n    User stepuser\n    Port 2200\n")
    config = _config(
        fake_home,
        "Include conf.d/*.conf\n"
        "include = ~/.step/includes  # trailing comment\n"
        "Include /nonexistent/*.conf\n",
    )
    (endpoint,) = resolve_route(SshTarget("leonardo", "leo", ssh_config_path=config))
    # Host patterns match the name given, not its HostName (as in OpenSSH).
    assert (endpoint.hostname, endpoint.port) == ("leo.example", 22)
    (direct,) = resolve_route(SshTarget("x", "login.example", ssh_config_path=config))
    assert (direct.user, direct.port) == ("stepuser", 2200)


def test_config_proxy_command(fake_home: Path) -> None:
    config = _config(
        fake_home,
        "Host gw\n    ProxyCommand none\n"
        "Host inner\n    ProxyCommand ssh -W %h:%p bastion\n"
        "Host both\n    ProxyCommand ssh -W %h:%p bastion\n    ProxyJump gw\n",
    )
    assert resolve_route(SshTarget("s", "gw", ssh_config_path=config))[0].proxy_command is None
    (inner,) = resolve_route(SshTarget("s", "inner", ssh_config_path=config))
    assert inner.proxy_command == "ssh -W inner:22 bastion"
    # ProxyJump wins over ProxyCommand, as in OpenSSH.
    both = resolve_route(SshTarget("s", "both", ssh_config_path=config))
    assert [endpoint.proxy_command for endpoint in both] == [None, None]


def test_explicit_target_values_win_over_config(fake_home: Path) -> None:
    config = _config(
        fake_home,
        "Host leo\n    HostName h\n    User alice\n    Port 2222\n    IdentityFile ~/k\n"
        "    IdentitiesOnly yes\n",
    )
    target = SshTarget(
        "leonardo",
        "leo",
        port=22,
        user="bob",
        identity_file=Path("/keys/bob"),
        known_hosts=Path("/kh"),
        ssh_config_path=config,
    )
    (endpoint,) = resolve_route(target)
    assert (endpoint.port, endpoint.user) == (22, "bob")
    assert endpoint.identity_files == (Path("/keys/bob"),)
    assert endpoint.known_hosts_files == (Path("/kh"),)
    assert not endpoint.use_agent  # IdentitiesOnly yes


def test_use_ssh_config_false_ignores_the_file(fake_home: Path) -> None:
    config = _config(fake_home, "Host *\n    Port 2222\n    User alice\n")
    (endpoint,) = resolve_route(SshTarget("s", "h", user="me", ssh_config_path=config, use_ssh_config=False))
    assert (endpoint.port, endpoint.user) == (22, "me")


def test_proxy_jump_hops_and_recursion(fake_home: Path) -> None:
    config = _config(
        fake_home,
        "Host site\n    HostName 10.0.0.5\n    ProxyJump gw2,carol@gw3:2200\n"
        "Host gw2\n    HostName gw2.example\n    ProxyJump gw1\n    IdentityFile ~/gw2key\n"
        "Host gw1\n    HostName gw1.example\n    User dave\n",
    )
    route = resolve_route(SshTarget("s", "site", user="me", ssh_config_path=config))
    assert [(e.name, e.hostname, e.port) for e in route] == [
        ("gw1", "gw1.example", 22),
        ("gw2", "gw2.example", 22),
        ("gw3", "gw3", 2200),
        ("site", "10.0.0.5", 22),
    ]
    assert route[0].user == "dave" and route[2].user == "carol"
    assert route[1].identity_files == (fake_home / "gw2key",)


def test_proxy_jump_explicit_and_none(fake_home: Path) -> None:
    config = _config(fake_home, "Host site\n    ProxyJump gw\n")
    key = Path("/keys/site")
    explicit = resolve_route(
        SshTarget("s", "site", identity_file=key, proxy_jump="u@[::1]:2022", ssh_config_path=config)
    )
    assert [(e.hostname, e.port, e.user) for e in explicit[:1]] == [("::1", 2022, "u")]
    assert explicit[0].address == "[::1]:2022"
    # A jump host without its own key gets the site's.
    assert explicit[0].identity_files == (key,)
    assert len(resolve_route(SshTarget("s", "site", proxy_jump="none", ssh_config_path=config))) == 1


def test_proxy_jump_loop_is_a_config_error(fake_home: Path) -> None:
    config = _config(fake_home, "Host a\n    ProxyJump b\nHost b\n    ProxyJump a\n")
    with pytest.raises(ConfigError, match="ProxyJump hops"):
        resolve_route(SshTarget("s", "a", ssh_config_path=config))


def test_bad_config_values_are_config_errors(fake_home: Path) -> None:
    config = _config(fake_home, "Host a\n    Port nope\n")
    with pytest.raises(ConfigError, match="bad Port"):
        resolve_route(SshTarget("s", "a", ssh_config_path=config))
    with pytest.raises(ConfigError, match="bad port"):
        resolve_route(SshTarget("s", "a", proxy_jump="gw:xx", use_ssh_config=False))


def test_target_accepts_strings_for_paths() -> None:
    target = SshTarget("s", "h", identity_file="/k", known_hosts="/kh")  # type: ignore[arg-type]
    assert target == SshTarget("s", "h", identity_file=Path("/k"), known_hosts=Path("/kh"))


# -- key loading -------------------------------------------------------------------


def _write_key(path: Path, kind: str, password: bytes | None = None) -> Any:
    private: Any
    if kind == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    elif kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    path.write_bytes(
        private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption)
    )
    return private


def _write_certificate(key_path: Path, private: Any, valid_before: dt.datetime) -> None:
    ca = ed25519.Ed25519PrivateKey.generate()
    certificate = (
        serialization.SSHCertificateBuilder()
        .public_key(private.public_key())
        .serial(1)
        .type(serialization.SSHCertificateType.USER)
        .key_id(b"aif-unit")
        .valid_principals([b"alice"])
        .valid_after(int(valid_before.timestamp()) - 7200)
        .valid_before(int(valid_before.timestamp()))
        .sign(ca)
    )
    Path(f"{key_path}-cert.pub").write_bytes(certificate.public_bytes())


def _endpoint(*identity_files: Path, use_agent: bool = False) -> ResolvedEndpoint:
    return ResolvedEndpoint(
        name="h",
        hostname="h",
        port=22,
        user="alice",
        identity_files=identity_files,
        identity_files_explicit=True,
        known_hosts_files=(),
        use_agent=use_agent,
    )


def test_identities_load_every_key_type_and_report_problems(tmp_path: Path) -> None:
    paths = {kind: tmp_path / f"id_{kind}" for kind in ("ed25519", "rsa", "ecdsa")}
    for kind, path in paths.items():
        _write_key(path, kind)
    locked = tmp_path / "locked"
    _write_key(locked, "ed25519", password=b"secret")
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key")
    found = ssh._identities(_endpoint(*paths.values(), locked, garbage, tmp_path / "missing"))
    assert [key.get_name() for key in found.keys] == ["ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256"]
    assert found.tried == ["id_ed25519", "id_rsa", "id_ecdsa"]
    notes = " | ".join(found.notes)
    assert "locked is passphrase-protected: load it into ssh-agent" in notes
    assert "garbage unusable" in notes
    assert "missing does not exist" in notes
    assert "secret" not in notes


def test_certificate_beside_a_key_is_offered_first(tmp_path: Path) -> None:
    key_path = tmp_path / "id_ed25519"
    private = _write_key(key_path, "ed25519")
    _write_certificate(key_path, private, dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=12))
    found = ssh._identities(_endpoint(key_path))
    assert found.tried == ["id_ed25519 (certificate)", "id_ed25519"]
    assert found.keys[0].public_blob is not None
    assert found.keys[0].public_blob.key_type == "ssh-ed25519-cert-v01@openssh.com"
    assert found.keys[1].public_blob is None


def test_expired_certificate_is_reported_not_offered(tmp_path: Path) -> None:
    key_path = tmp_path / "id_ed25519"
    private = _write_key(key_path, "ed25519")
    _write_certificate(key_path, private, dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1))
    found = ssh._identities(_endpoint(key_path))
    assert found.tried == ["id_ed25519"]
    assert "expired at" in found.notes[0]


def test_agent_keys_come_after_key_files(
    tmp_path: Path, mocker: MockerFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_path = tmp_path / "id_ed25519"
    _write_key(key_path, "ed25519")
    agent_key = mocker.Mock(spec=paramiko.PKey)
    agent = mocker.patch.object(paramiko, "Agent")
    agent.return_value.get_keys.return_value = (agent_key,)
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/agent.sock")
    found = ssh._identities(_endpoint(key_path, use_agent=True))
    assert found.keys[-1] is agent_key
    assert found.tried == ["id_ed25519", "agent (1 keys)"]
    found.close()
    agent.return_value.close.assert_called_once()
    monkeypatch.delenv("SSH_AUTH_SOCK")
    assert ssh._identities(_endpoint(use_agent=True)).tried == ["agent (not running)"]


# -- connection errors, mapped ----------------------------------------------------


def _target(**changes: Any) -> SshTarget:
    values: dict[str, Any] = {
        "site": "leonardo",
        "host": "127.0.0.1",
        "port": 2231,
        "user": "alice",
        "identity_file": Path("/nonexistent/key"),
        "known_hosts": Path("/nonexistent/known_hosts"),
        "use_ssh_config": False,
        "use_agent": False,
        "connect_timeout": 2.0,
    }
    values.update(changes)
    return SshTarget(**values)


def _one_clean_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and "Traceback" not in message
    # No chained paramiko/socket exception for a traceback to show.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    return message


@pytest.mark.parametrize(
    ("raised", "reason"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (TimeoutError("timed out"), "timed out after 2 s"),
        (
            socket.gaierror(-2, "Name or service not known"),
            "cannot resolve host name (Name or service not known)",
        ),
        (
            paramiko.ssh_exception.NoValidConnectionsError({("127.0.0.1", 2231): OSError()}),
            "connection refused",
        ),
        (OSError(113, "No route to host"), "no route to host"),
    ],
)
def test_socket_errors_become_site_unreachable(mocker: MockerFixture, raised: OSError, reason: str) -> None:
    mocker.patch.object(socket, "create_connection", side_effect=raised)
    with pytest.raises(SiteUnreachable) as caught:
        SshTransport(_target()).run(["true"])
    assert _one_clean_line(caught.value) == (f"cannot connect to site leonardo at 127.0.0.1:2231: {reason}")


@pytest.fixture
def fake_socket(mocker: MockerFixture) -> Any:
    sock = mocker.Mock(spec=socket.socket)
    mocker.patch.object(socket, "create_connection", return_value=sock)
    # A mock has no file descriptor to re-wrap: quick ACKs are tested on a real socket below.
    mocker.patch.object(ssh_connection, "_TCP_QUICKACK", None)
    return sock


def test_tcp_nodelay_is_set_on_our_socket(mocker: MockerFixture, fake_socket: Any) -> None:
    connect = mocker.patch.object(paramiko.SSHClient, "connect", side_effect=paramiko.SSHException("x"))
    with pytest.raises(SiteUnreachable):
        SshTransport(_target()).connect()
    fake_socket.setsockopt.assert_any_call(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connect_kwargs = connect.call_args.kwargs
    assert connect_kwargs["sock"] is fake_socket
    assert connect_kwargs["allow_agent"] is False and connect_kwargs["look_for_keys"] is False


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux's")
def test_our_tcp_socket_acknowledges_at_once_and_still_reads() -> None:
    """sshd's small answers wait for our ACK (it sends without TCP_NODELAY): ours ACKs at once."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        endpoint = replace(_endpoint(), hostname="127.0.0.1", port=server.getsockname()[1])
        sock = ssh_connection._open_socket(endpoint, 5.0, tcp_nodelay=True)
        try:
            peer, _ = server.accept()
            with peer:
                peer.sendall(b"SSH-2.0-test\r\n")
                assert isinstance(sock, ssh_connection._QuickAckSocket) and sock.gettimeout() == 5.0
                assert sock.recv(64) == b"SSH-2.0-test\r\n"
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            sock.close()
    # Measuring Nagle's cost (tcp_nodelay off) leaves the socket as it is.
    with socket.create_server(("127.0.0.1", 0)) as server:
        endpoint = replace(_endpoint(), hostname="127.0.0.1", port=server.getsockname()[1])
        plain = ssh_connection._open_socket(endpoint, 5.0, tcp_nodelay=False)
        plain.close()
    assert type(plain) is socket.socket


def test_authentication_failure_names_user_and_keys(
    mocker: MockerFixture, fake_socket: Any, tmp_path: Path
) -> None:
    key_path = tmp_path / "site_key"
    _write_key(key_path, "ed25519")
    mocker.patch.object(
        paramiko.SSHClient,
        "connect",
        side_effect=paramiko.AuthenticationException("Authentication failed."),
    )
    with pytest.raises(SiteUnreachable) as caught:
        SshTransport(_target(identity_file=key_path)).run(["true"])
    assert not isinstance(caught.value, HostKeyRejected)
    assert _one_clean_line(caught.value) == (
        "cannot log in to site leonardo at 127.0.0.1:2231: authentication failed for user "
        "alice (keys tried: site_key)"
    )


def test_changed_host_key_is_host_key_rejected(mocker: MockerFixture, fake_socket: Any) -> None:
    server = _pkey()
    known = _pkey()
    mocker.patch.object(
        paramiko.SSHClient,
        "connect",
        side_effect=paramiko.BadHostKeyException("127.0.0.1", server, known),
    )
    with pytest.raises(HostKeyRejected) as caught:
        SshTransport(_target()).run(["true"])
    message = _one_clean_line(caught.value)
    assert "site leonardo: host key for [127.0.0.1]:2231 has CHANGED" in message
    assert "possible man-in-the-middle attack" in message
    assert server.fingerprint in message and known.fingerprint in message
    assert "ssh-keygen -R '[127.0.0.1]:2231'" in message


def _pkey() -> paramiko.PKey:
    private = ed25519.Ed25519PrivateKey.generate()
    text = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    return paramiko.Ed25519Key.from_private_key(io.StringIO(text))


def test_unknown_host_key_policy_raises_with_keyscan_hint() -> None:
    endpoint = ResolvedEndpoint(
        "leo", "127.0.0.1", 2231, "alice", (), False, (Path("/home/a/.ssh/known_hosts"),), False
    )
    policy = ssh._RejectUnknownHostKey("leonardo", endpoint)
    key = _pkey()
    with pytest.raises(HostKeyRejected) as caught:
        policy.missing_host_key(paramiko.SSHClient(), "[127.0.0.1]:2231", key)
    message = _one_clean_line(caught.value)
    assert message.startswith(
        "site leonardo: host key for [127.0.0.1]:2231 is not in known_hosts "
        "(/home/a/.ssh/known_hosts); its fingerprint is SHA256:"
    )
    assert "`ssh-keyscan -p 2231 127.0.0.1 >> /home/a/.ssh/known_hosts`" in message


def test_known_hosts_parsing_skips_markers_and_junk(tmp_path: Path) -> None:
    good, revoked, ca = _pkey(), _pkey(), _pkey()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        "# comment\n\n"
        f"@cert-authority *.example.org {ca.get_name()} {ca.get_base64()}\n"
        f"@revoked * {revoked.get_name()} {revoked.get_base64()}\n"
        "junk\n"
        "host ssh-ed25519 %%%not-base64\n"
        f"[127.0.0.1]:2231,login.example {good.get_name()} {good.get_base64()}\n"
    )
    endpoint = ResolvedEndpoint(
        "leo", "127.0.0.1", 2231, "alice", (), False, (known_hosts, tmp_path / "absent"), False
    )
    client = paramiko.SSHClient()
    assert ssh._load_known_hosts(client, "leonardo", endpoint) == [revoked]
    host_keys = client.get_host_keys()
    assert host_keys.lookup("[127.0.0.1]:2231") == {"ssh-ed25519": good}
    assert host_keys.lookup("login.example") is not None
    assert host_keys.lookup("x.example.org") is None


def test_never_auto_adds_host_keys(mocker: MockerFixture, fake_socket: Any) -> None:
    policies: list[paramiko.MissingHostKeyPolicy] = []
    mocker.patch.object(
        paramiko.SSHClient,
        "set_missing_host_key_policy",
        autospec=True,
        side_effect=lambda client, policy: policies.append(policy),
    )
    mocker.patch.object(paramiko.SSHClient, "connect", side_effect=EOFError())
    with pytest.raises(SiteUnreachable, match="closed the connection during the handshake"):
        SshTransport(_target()).run(["true"])
    assert [type(policy) for policy in policies] == [ssh._RejectUnknownHostKey]


@pytest.mark.parametrize(
    "raised",
    [paramiko.SSHException("Error reading SSH protocol banner"), Exception("odd paramiko path")],
)
def test_other_paramiko_errors_become_site_unreachable(
    mocker: MockerFixture, fake_socket: Any, raised: Exception
) -> None:
    mocker.patch.object(paramiko.SSHClient, "connect", side_effect=raised)
    with pytest.raises(SiteUnreachable) as caught:
        SshTransport(_target()).run(["true"])
    assert _one_clean_line(caught.value) == (f"cannot connect to site leonardo at 127.0.0.1:2231: {raised}")


# -- run() on a scripted connection ------------------------------------------------


class _FakeChannel:
    """Enough of paramiko.Channel for SshTransport.run."""

    def __init__(self, script: Callable[[_FakeChannel], None]) -> None:
        self.script = script
        self.command: str | None = None
        self.stdin = bytearray()
        self.exit_status = -1
        self.status_event = threading.Event()
        self.write_shut = False
        self.closed = threading.Event()
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._eof = threading.Event()

    def exec_command(self, command: str) -> None:
        self.command = command
        threading.Thread(target=self.script, args=(self,), daemon=True).start()

    def finish(self, stdout: bytes = b"", stderr: bytes = b"", status: int | None = 0) -> None:
        self._out.append(stdout)
        self._err.append(stderr)
        if status is not None:
            self.exit_status = status
        self._eof.set()
        self.status_event.set()

    def _recv(self, chunks: list[bytes]) -> bytes:
        while not chunks:
            if self.closed.is_set() or self._eof.is_set():
                return b""
            time.sleep(0.001)
        return chunks.pop(0)

    def recv(self, size: int) -> bytes:
        return self._recv(self._out)

    def recv_stderr(self, size: int) -> bytes:
        return self._recv(self._err)

    def send(self, data: bytes) -> int:
        self.stdin.extend(data)
        return len(data)

    def shutdown_write(self) -> None:
        self.write_shut = True

    def close(self) -> None:
        self.closed.set()
        self.status_event.set()


class _FakeConnection:
    def __init__(self, channels: list[_FakeChannel]) -> None:
        self.alive = True
        self.channels = channels
        self.sftp = None
        self.transport = self
        self.opened: list[_FakeChannel] = []

    def open_session(self, timeout: float | None = None) -> _FakeChannel:
        if not self.alive:
            raise paramiko.SSHException("SSH session not active")
        channel = self.channels.pop(0)
        self.opened.append(channel)
        return channel

    def is_alive(self) -> bool:
        return self.alive

    def close(self) -> None:
        self.alive = False


@pytest.fixture
def connections(mocker: MockerFixture) -> Iterator[list[_FakeConnection]]:
    """Connections _connect_route hands out, in order; the test fills the list."""
    pool: list[_FakeConnection] = []
    handed_out = iter(pool)
    mocker.patch.object(ssh_transport, "_connect_route", side_effect=lambda *args: next(handed_out))
    yield pool


def _answer(stdout: bytes = b"", stderr: bytes = b"", status: int = 0) -> _FakeChannel:
    return _FakeChannel(lambda channel: channel.finish(stdout, stderr, status))


def test_run_quotes_every_argument_and_sends_eof(connections: list[_FakeConnection]) -> None:
    channel = _answer(b"out", b"err", 3)
    connections.append(_FakeConnection([channel]))
    seen: list[tuple[str, tuple[str, ...]]] = []
    transport = SshTransport(_target(), on_command=lambda site, argv: seen.append((site, tuple(argv))))
    result = transport.run(["echo", "$(rm -rf ~)", "it's"])
    assert channel.command == "echo '$(rm -rf ~)' 'it'\"'\"'s'"
    assert channel.write_shut  # EOF even with no stdin, or the remote waits
    assert result == CommandResult(("echo", "$(rm -rf ~)", "it's"), 3, "out", "err")
    assert seen == [("leonardo", ("echo", "$(rm -rf ~)", "it's"))]


def test_run_writes_stdin_then_eof(connections: list[_FakeConnection]) -> None:
    payload = os.urandom(100_000)

    def consume(channel: _FakeChannel) -> None:
        while not channel.write_shut:
            time.sleep(0.001)
        channel.finish(str(len(channel.stdin)).encode())

    channel = _FakeChannel(consume)
    connections.append(_FakeConnection([channel]))
    assert SshTransport(_target()).run(["wc", "-c"], stdin=payload).stdout == "100000"
    assert bytes(channel.stdin) == payload


# -- connect_soon: the login overlaps the caller's work ------------------------------------


def _slow_route(mocker: MockerFixture, outcomes: list[Any], release: threading.Event) -> list[int]:
    """_connect_route waits for ``release``, then hands out (or raises) the next outcome."""
    calls: list[int] = []

    def connect(*_args: object) -> Any:
        calls.append(1)
        release.wait(5)
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    mocker.patch.object(ssh_transport, "_connect_route", side_effect=connect)
    return calls


def test_connect_soon_logs_in_once_and_the_first_command_uses_it(mocker: MockerFixture) -> None:
    release = threading.Event()
    connection = _FakeConnection([_answer(b"ok")])
    calls = _slow_route(mocker, [connection], release)
    transport = SshTransport(_target())
    transport.connect_soon()
    transport.connect_soon()  # one login at a time
    release.set()
    assert transport.run(["true"]).stdout == "ok"
    assert (len(calls), transport.connect_count) == (1, 1)


def test_a_failed_early_login_is_the_first_commands_answer_not_a_second_try(mocker: MockerFixture) -> None:
    release = threading.Event()
    release.set()
    down = SiteUnreachable("site leonardo unreachable: connection refused")
    calls = _slow_route(mocker, [down, _FakeConnection([_answer(b"later")])], release)
    transport = SshTransport(_target())
    transport.connect_soon()
    with pytest.raises(SiteUnreachable, match="connection refused"):
        transport.run(["true"])
    assert len(calls) == 1
    assert transport.run(["true"]).stdout == "later"  # the next command logs in again


def test_close_does_not_wait_for_a_login_nobody_used(mocker: MockerFixture) -> None:
    release = threading.Event()
    connection = _FakeConnection([])
    _slow_route(mocker, [connection], release)
    transport = SshTransport(_target())
    transport.connect_soon()
    time.sleep(0.05)  # the login is under way, waiting for the server
    started = time.monotonic()
    transport.close()
    assert time.monotonic() - started < 1
    release.set()
    assert transport._early is not None
    transport._early.join(5)
    assert not connection.alive  # dropped by the login itself once it ended


def test_run_rejects_nul_and_empty_argv(connections: list[_FakeConnection]) -> None:
    transport = SshTransport(_target())
    with pytest.raises(ValueError, match="NUL"):
        transport.run(["echo", "a\0b"])
    with pytest.raises(ValueError):
        transport.run([])
    assert transport.connect_count == 0


def test_connection_is_lazy_and_reused(connections: list[_FakeConnection]) -> None:
    connections.append(_FakeConnection([_answer(b"1"), _answer(b"2")]))
    transport = SshTransport(_target())
    assert transport.connect_count == 0
    assert [transport.run(["x"]).stdout for _ in range(2)] == ["1", "2"]
    assert transport.connect_count == 1


def test_drop_during_a_command_raises_and_is_not_retried(
    connections: list[_FakeConnection],
) -> None:
    first = _FakeConnection([])

    def dies(channel: _FakeChannel) -> None:
        first.alive = False
        channel.finish(b"partial", status=None)

    first.channels.append(_FakeChannel(dies))
    second = _FakeConnection([_answer(b"again")])
    connections.extend([first, second])
    transport = SshTransport(_target())
    with pytest.raises(ConnectionLost) as caught:
        transport.run(["sbatch", "--parsable"], stdin=b"#!/bin/sh\n")
    assert _one_clean_line(caught.value) == (
        "connection to site leonardo dropped while running sbatch --parsable: it may or may not have run"
    )
    assert len(first.opened) == 1 and not second.opened  # no silent retry
    # The next command logs in again by itself.
    assert transport.run(["squeue"]).stdout == "again"
    assert transport.connect_count == 2


def test_stale_connection_is_replaced_before_sending(connections: list[_FakeConnection]) -> None:
    # is_alive() said yes, but opening a session fails: nothing was sent,
    # so one fresh login is safe.
    stale = _FakeConnection([_answer(b"first")])
    fresh = _FakeConnection([_answer(b"second")])
    connections.extend([stale, fresh])
    transport = SshTransport(_target())
    transport.run(["true"])

    def open_fails(timeout: float | None = None) -> _FakeChannel:
        raise EOFError()

    stale.open_session = open_fails  # type: ignore[method-assign]
    stale_checks = iter([True, False])
    stale.is_alive = lambda: next(stale_checks, False)  # type: ignore[method-assign]
    assert transport.run(["true"]).stdout == "second"
    assert transport.connect_count == 2


def test_timeout_closes_the_channel_and_keeps_the_connection(
    connections: list[_FakeConnection],
) -> None:
    hanging = _FakeChannel(lambda channel: None)
    connections.append(_FakeConnection([hanging, _answer(b"ok")]))
    transport = SshTransport(_target())
    with pytest.raises(ConnectionLost) as caught:
        transport.run(["sleep", "100"], timeout=0.2)
    assert _one_clean_line(caught.value) == ("site leonardo: command timed out after 0.2 s: sleep 100")
    assert hanging.closed.is_set()
    assert transport.run(["true"]).stdout == "ok"
    assert transport.connect_count == 1


def test_no_exit_status_on_a_live_connection_is_255(connections: list[_FakeConnection]) -> None:
    connections.append(_FakeConnection([_FakeChannel(lambda c: c.finish(status=None))]))
    assert SshTransport(_target()).run(["sh", "-c", "kill -9 $$"]).returncode == 255


def test_connection_cache_one_transport_per_site() -> None:
    try:
        target = _target()
        first = connection_for(target)
        assert connection_for(target) is first
        hook: Callable[[str, Any], None] = lambda site, argv: None  # noqa: E731
        assert connection_for(target, on_command=hook).on_command is hook
        other = connection_for(_target(port=2232))
        assert other is not first and other.target.port == 2232
        assert connection_for(_target(site="other")) is not other
    finally:
        close_all()
    assert connection_for(_target()) is not first
    close_all()


def test_a_reused_ssh_connection_takes_the_callers_hook_or_none() -> None:
    """An earlier `aif -v` in the same process must not keep echoing for callers without -v."""
    from gateway.transports.ssh import SshTarget, close_all, connection_for

    target = SshTarget(site="hooked", host="127.0.0.1", port=1)
    seen: list[str] = []
    first = connection_for(target, on_command=lambda site, argv: seen.append(site))
    again = connection_for(target)
    try:
        assert again is first and again.on_command is None
    finally:
        close_all()
