"""SshTransport against a real OpenSSH server started by this module.

The fixture runs a private sshd on 127.0.0.1 (port 2291, or a free port when
that one is taken) with its own host key and its own authorized_keys file,
logging in as ``aifuser`` (created if missing). Nothing under any real
~/.ssh is read or written: every test passes explicit key and known_hosts
paths, or a temporary ssh config file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from gateway.errors import ConnectionLost, HostKeyRejected, SiteUnreachable
from gateway.transports.ssh import SshTarget, SshTransport, close_all, connection_for

pytestmark = pytest.mark.integration

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
USER = "aifuser"
PREFERRED_PORT = int(os.environ.get("AIF_TEST_SSHD_PORT", "2291"))
HOSTILE_ARGS = [
    "$(touch {marker})",
    "`touch {marker}`",
    "; touch {marker}",
    "&& touch {marker} ||",
    "| touch {marker}",
    "> {marker}",
    "'",
    '"',
    'it\'s "quoted"',
    "line one\nline two; touch {marker}\n",
    "$HOME ${{IFS}} $0 $$",
    "*",
    "~",
    "\\",
    "\\'",
    "",
    " leading and trailing ",
    "-n",
    "!!",
    "#not a comment",
    "tab\there",
    "ünïcödé ✓",
]


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )


def _public(path: Path) -> str:
    """'type base64' of a .pub file (no comment)."""
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise RuntimeError("no free TCP port")


def _ensure_user() -> None:
    """Create aifuser if missing; unlock it (sshd with UsePAM no refuses '!')."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        # Another test session may create it at the same moment: ignore
        # "already exists" and check again.
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", USER], capture_output=True)
        pwd.getpwnam(USER)
    shadow = subprocess.run(["getent", "shadow", USER], capture_output=True, text=True).stdout
    password_field = shadow.split(":")[1] if ":" in shadow else ""
    if password_field.startswith("!"):
        subprocess.run(["usermod", "-p", "*", USER], check=True)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the per-connection sshd children and commands)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat_line = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces: the ppid follows the last ')'.
        parent = int(stat_line.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


@dataclass
class Sshd:
    """A private sshd and the keys and files around it."""

    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    orphans: list[int] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.root / "sshd_config"

    @property
    def log(self) -> Path:
        return self.root / "sshd.log"

    @property
    def client_key(self) -> Path:
        return self.root / "client_key"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def key(self, name: str) -> Path:
        return self.root / name

    def target(self, **changes: object) -> SshTarget:
        base = SshTarget(
            site="devsite",
            host="127.0.0.1",
            port=self.port,
            user=USER,
            identity_file=self.client_key,
            known_hosts=self.known_hosts,
            connect_timeout=5.0,
            use_ssh_config=False,
            use_agent=False,
        )
        return replace(base, **changes)  # type: ignore[arg-type]

    def logins(self) -> int:
        return self.log.read_text(errors="replace").count("Accepted publickey")

    def start(self) -> None:
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening within 10 s")

    def kill(self) -> None:
        """Kill the listener and every connection it serves, like a crashed node."""
        if self.process is None:
            return
        victims = _descendants(self.process.pid)
        for pid in [*victims, self.process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(10)
        self.process = None
        self.orphans.extend(victims)

    def kill_connections(self) -> None:
        """Kill only the per-connection children: every open session drops."""
        assert self.process is not None
        for pid in _descendants(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def sshd() -> Iterator[Sshd]:
    if os.geteuid() != 0:
        pytest.skip("needs root: sshd must switch to the test user aifuser")
    if not SSHD.exists():
        # A fresh machine: the project installs what it needs (the sandbox's installer).
        from gateway.sandbox.manager import ensure_packages

        ensure_packages()
    _ensure_user()
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privsep dir
    root = Path(tempfile.mkdtemp(prefix="aif-sshd-"))
    # aifuser must read authorized_keys (sshd reads it with the user's rights).
    root.chmod(0o755)
    server = Sshd(root=root, port=_free_port(PREFERRED_PORT))
    try:
        _keygen(root / "host_key", "aif-test-host")
        _keygen(root / "other_host_key", "aif-test-other-host")
        _keygen(server.client_key, "aif-test-client")
        _keygen(root / "wrong_key", "aif-test-wrong")
        _keygen(root / "ca", "aif-test-ca")
        _keygen(root / "cert_key", "aif-test-cert")
        _keygen(root / "expired_cert_key", "aif-test-expired")
        for name, validity in (("cert_key", "-5m:+1h"), ("expired_cert_key", "-2h:-1h")):
            subprocess.run(
                [
                    SSH_KEYGEN,
                    "-q",
                    "-s",
                    str(root / "ca"),
                    "-I",
                    f"aif-{name}",
                    "-n",
                    USER,
                    "-V",
                    validity,
                    str(root / f"{name}.pub"),
                ],
                check=True,
            )
        authorized = root / "authorized_keys"
        authorized.write_text(
            f"{_public(server.client_key)} aif-test-client\n"
            f"cert-authority {_public(root / 'ca')} aif-test-ca\n"
        )
        authorized.chmod(0o644)
        server.known_hosts.write_text(f"[127.0.0.1]:{server.port} {_public(root / 'host_key')}\n")
        server.config.write_text(
            f"Port {server.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {root / 'host_key'}\n"
            f"PidFile {root / 'sshd.pid'}\n"
            "UsePAM no\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\n"
            f"AuthorizedKeysFile {authorized}\n"
            # The key file lives under /tmp (mode 1777), which StrictModes
            # would refuse; it is our own throwaway file.
            "StrictModes no\n"
            "PermitRootLogin no\n"
            f"AllowUsers {USER}\n"
            "AllowTcpForwarding yes\n"
            "MaxStartups 50\n"
            "LogLevel VERBOSE\n"
            "Subsystem sftp internal-sftp\n"
        )
        server.start()
        yield server
    finally:
        close_all()
        server.kill()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's running ssh-agent must not change what these tests see.
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


@pytest.fixture
def remote_dir(sshd: Sshd) -> Iterator[str]:
    path = f"/tmp/aif-test-{uuid.uuid4().hex}"
    with SshTransport(sshd.target()) as transport:
        assert transport.run(["mkdir", "-p", path]).ok
        yield path
        transport.run(["rm", "-rf", path])


def test_runs_a_command_as_the_user(sshd: Sshd) -> None:
    with SshTransport(sshd.target()) as transport:
        result = transport.run(["id", "-un"])
    assert result.ok
    assert result.stdout == f"{USER}\n"
    assert result.argv == ("id", "-un")


def test_exit_code_and_stderr_come_back(sshd: Sshd) -> None:
    with SshTransport(sshd.target()) as transport:
        result = transport.run(["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (result.returncode, result.stdout, result.stderr) == (7, "out\n", "err\n")


def test_hostile_arguments_arrive_literally_and_run_nothing(sshd: Sshd) -> None:
    marker = f"/tmp/aif-hostile-{uuid.uuid4().hex}"
    args = [arg.format(marker=marker) for arg in HOSTILE_ARGS]
    with SshTransport(sshd.target()) as transport:
        result = transport.run(["printf", "%s\\0", *args])
        assert result.ok, result.stderr
        assert result.stdout.split("\0")[:-1] == args
        # Hostile text as the program name is one (missing) program, too.
        missing = transport.run([f"true; touch {marker}"])
        assert missing.returncode == 127
        exists = transport.run(["test", "-e", marker])
    assert exists.returncode == 1, f"{marker} was created: quoting failed"
    assert not Path(marker).exists()


def test_large_stdin_and_stdout_at_once(sshd: Sshd) -> None:
    # 5 MB each way through `cat`: the remote blocks on a full stdout window
    # unless we read while we write.
    payload = (hashlib.sha256(b"seed").hexdigest() * (5 * 1024 * 1024 // 64 + 1)).encode()
    with SshTransport(sshd.target()) as transport:
        echoed = transport.run(["cat"], stdin=payload, timeout=60)
        digest = transport.run(["sha256sum"], stdin=payload, timeout=60)
    assert echoed.ok and len(echoed.stdout) == len(payload)
    assert echoed.stdout.encode() == payload
    assert digest.stdout.split()[0] == hashlib.sha256(payload).hexdigest()


def test_large_stdout_and_stderr_together(sshd: Sshd) -> None:
    # stderr is written first and fills the shared window if nobody reads it.
    script = "head -c 4000000 /dev/zero | tr '\\0' e >&2; head -c 20000000 /dev/zero | tr '\\0' o"
    with SshTransport(sshd.target()) as transport:
        result = transport.run(["sh", "-c", script], timeout=60)
    assert result.ok
    assert len(result.stdout) == 20_000_000 and set(result.stdout) == {"o"}
    assert len(result.stderr) == 4_000_000 and set(result.stderr) == {"e"}


def test_one_connection_serves_many_commands(sshd: Sshd) -> None:
    logins_before = sshd.logins()
    with SshTransport(sshd.target()) as transport:
        for number in range(50):
            assert transport.run(["echo", str(number)]).stdout == f"{number}\n"
        assert transport.connect_count == 1
    time.sleep(0.2)  # sshd logs after the fact
    assert sshd.logins() - logins_before == 1


def test_connection_for_caches_one_transport_per_site(sshd: Sshd) -> None:
    target = sshd.target(site="cached")
    seen: list[tuple[str, tuple[str, ...]]] = []

    def hook(site: str, argv: Sequence[str]) -> None:
        seen.append((site, tuple(argv)))

    first = connection_for(target, on_command=hook)
    second = connection_for(target, on_command=hook)
    assert first is second
    first.run(["true"])
    second.run(["true"], stdin=b"secret stdin is never reported")
    assert first.connect_count == 1
    assert seen == [("cached", ("true",)), ("cached", ("true",))]
    # A caller without a hook gets the same connection, and no echo of its commands.
    third = connection_for(target)
    assert third is first
    third.run(["true"])
    assert len(seen) == 2
    close_all()
    assert connection_for(target) is not first


def test_timeout_raises_and_connection_stays_usable(sshd: Sshd, remote_dir: str) -> None:
    pid_file = f"{remote_dir}/pid"
    slow = ["sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"]
    with SshTransport(sshd.target()) as transport:
        started = time.monotonic()
        with pytest.raises(ConnectionLost, match=r"timed out after 0\.5 s: sh -c"):
            transport.run(slow, timeout=0.5)
        assert time.monotonic() - started < 3
        assert transport.run(["echo", "still here"]).stdout == "still here\n"
        assert transport.connect_count == 1
        # Closing the channel does not stop the remote command; end it here
        # so it does not outlive the test.
        remote_pid = transport.read_file(pid_file).decode().strip()
        assert transport.run(["kill", remote_pid]).ok


def test_command_killed_by_signal_is_a_result_not_a_drop(sshd: Sshd) -> None:
    with SshTransport(sshd.target()) as transport:
        result = transport.run(["sh", "-c", "kill -9 $$"])
        assert result.returncode == 255  # what OpenSSH's ssh reports too
        assert transport.run(["true"]).ok
        assert transport.connect_count == 1


def test_unknown_host_key_is_refused(sshd: Sshd) -> None:
    empty = sshd.root / "empty_known_hosts"
    empty.write_text("")
    transport = SshTransport(sshd.target(known_hosts=empty))
    with transport, pytest.raises(HostKeyRejected) as caught:
        transport.run(["true"])
    message = str(caught.value)
    assert f"host key for [127.0.0.1]:{sshd.port} is not in known_hosts" in message
    assert "SHA256:" in message and f"ssh-keyscan -p {sshd.port} 127.0.0.1" in message
    assert "\n" not in message
    assert caught.value.__cause__ is None


def test_changed_host_key_is_refused(sshd: Sshd) -> None:
    stale = sshd.root / "stale_known_hosts"
    stale.write_text(f"[127.0.0.1]:{sshd.port} {_public(sshd.key('other_host_key'))}\n")
    transport = SshTransport(sshd.target(known_hosts=stale))
    with transport, pytest.raises(HostKeyRejected, match=r"has CHANGED \(possible man-in-the"):
        transport.run(["true"])


def test_hashed_known_hosts_entries_are_understood(sshd: Sshd) -> None:
    hashed = sshd.root / "hashed_known_hosts"
    shutil.copy(sshd.known_hosts, hashed)
    subprocess.run([SSH_KEYGEN, "-q", "-H", "-f", str(hashed)], check=True, capture_output=True)
    assert "|1|" in hashed.read_text()
    with SshTransport(sshd.target(known_hosts=hashed)) as transport:
        assert transport.run(["true"]).ok


def test_wrong_key_is_an_authentication_failure(sshd: Sshd) -> None:
    wrong = sshd.key("wrong_key")
    transport = SshTransport(sshd.target(identity_file=wrong))
    with transport, pytest.raises(SiteUnreachable) as caught:
        transport.run(["true"])
    assert not isinstance(caught.value, HostKeyRejected)
    message = str(caught.value)
    assert f"authentication failed for user {USER}" in message
    assert "keys tried: wrong_key" in message
    assert "\n" not in message


def test_nothing_listening_is_unreachable(sshd: Sshd) -> None:
    port = _free_port(0)
    transport = SshTransport(sshd.target(port=port))
    expected = rf"cannot connect to site devsite at 127\.0\.0\.1:{port}: connection refused"
    with transport, pytest.raises(SiteUnreachable, match=expected):
        transport.run(["true"])


def test_sshd_killed_then_restarted(sshd: Sshd) -> None:
    transport = SshTransport(sshd.target())
    try:
        assert transport.run(["true"]).ok
        outcome: list[BaseException | object] = []

        def long_command() -> None:
            try:
                outcome.append(transport.run(["sleep", "30"]))
            except BaseException as exc:  # the assertion below looks at it
                outcome.append(exc)

        runner = threading.Thread(target=long_command)
        runner.start()
        time.sleep(0.5)
        sshd.kill()
        runner.join(10)
        assert not runner.is_alive()
        (dropped,) = outcome
        assert isinstance(dropped, ConnectionLost)
        assert "dropped while running sleep 30" in str(dropped)

        # Connecting fails before anything is sent: not a ConnectionLost.
        with pytest.raises(SiteUnreachable, match="connection refused") as refused:
            transport.run(["true"])
        assert not isinstance(refused.value, ConnectionLost)
    finally:
        if sshd.process is None:
            sshd.start()
    result = transport.run(["echo", "back"])
    assert result.stdout == "back\n"
    assert transport.connect_count == 2
    transport.close()


def test_dead_connection_is_replaced_before_the_next_command(sshd: Sshd) -> None:
    with SshTransport(sshd.target()) as transport:
        assert transport.run(["true"]).ok
        sshd.kill_connections()
        time.sleep(0.3)
        assert transport.run(["echo", "fresh"]).stdout == "fresh\n"
        assert transport.connect_count == 2


def test_ssh_config_alias_port_user_and_identity(sshd: Sshd) -> None:
    config = sshd.root / "alias_config"
    config.write_text(
        "Host aifalias\n"
        "    HostName 127.0.0.1\n"
        f"    Port {sshd.port}\n"
        f"    User {USER}\n"
        f"    IdentityFile {sshd.client_key}\n"
        f"    UserKnownHostsFile {sshd.known_hosts}\n"
        "    IdentitiesOnly yes\n"
    )
    target = SshTarget(site="aliased", host="aifalias", ssh_config_path=config)
    with SshTransport(target) as transport:
        assert transport.run(["id", "-un"]).stdout == f"{USER}\n"
        (endpoint,) = transport.route
    assert (endpoint.hostname, endpoint.port, endpoint.user) == ("127.0.0.1", sshd.port, USER)


def test_proxy_jump_through_the_same_sshd(sshd: Sshd) -> None:
    logins_before = sshd.logins()
    target = sshd.target(proxy_jump=f"{USER}@127.0.0.1:{sshd.port}")
    with SshTransport(target) as transport:
        assert transport.run(["id", "-un"]).stdout == f"{USER}\n"
        assert len(transport.route) == 2
    time.sleep(0.2)
    assert sshd.logins() - logins_before == 2


def test_proxy_jump_two_hops_from_ssh_config(sshd: Sshd) -> None:
    config = sshd.root / "jump_config"
    config.write_text(
        "Host hop\n"
        "    HostName 127.0.0.1\n"
        f"    Port {sshd.port}\n"
        f"    User {USER}\n"
        f"    IdentityFile {sshd.client_key}\n"
        "Host inner\n"
        "    HostName 127.0.0.1\n"
        f"    Port {sshd.port}\n"
        f"    User {USER}\n"
        f"    IdentityFile {sshd.client_key}\n"
        "    ProxyJump hop,hop\n"
    )
    logins_before = sshd.logins()
    target = SshTarget(
        site="jumped",
        host="inner",
        ssh_config_path=config,
        known_hosts=sshd.known_hosts,
        use_agent=False,
    )
    with SshTransport(target) as transport:
        assert transport.run(["echo", "via", "two", "hops"]).stdout == "via two hops\n"
        assert [endpoint.name for endpoint in transport.route] == ["hop", "hop", "inner"]
    time.sleep(0.2)
    assert sshd.logins() - logins_before == 3


def test_openssh_user_certificate_authenticates(sshd: Sshd) -> None:
    # cert_key itself is not in authorized_keys: only the CA-signed
    # certificate beside it can let it in.
    def certificate_logins() -> int:
        return sshd.log.read_text(errors="replace").count("ssh2: ED25519-CERT")

    before = certificate_logins()
    with SshTransport(sshd.target(identity_file=sshd.key("cert_key"))) as transport:
        assert transport.run(["id", "-un"]).stdout == f"{USER}\n"
    time.sleep(0.2)
    assert certificate_logins() == before + 1


def test_expired_certificate_is_named_in_the_error(sshd: Sshd) -> None:
    transport = SshTransport(sshd.target(identity_file=sshd.key("expired_cert_key")))
    with transport, pytest.raises(SiteUnreachable, match=r"expired_cert_key-cert\.pub expired at"):
        transport.run(["true"])


def test_a_renewed_certificate_is_used_without_restarting(sshd: Sshd, tmp_path: Path) -> None:
    """A certificate that expired during a long `aif wait`: the error says so and how to renew;
    once renewed in place, the same transport (the same wait) connects again."""
    key = tmp_path / "id_cert"
    shutil.copy(sshd.key("expired_cert_key"), key)
    shutil.copy(f"{sshd.key('expired_cert_key')}.pub", f"{key}.pub")
    shutil.copy(f"{sshd.key('expired_cert_key')}-cert.pub", f"{key}-cert.pub")
    key.chmod(0o600)
    transport = SshTransport(sshd.target(identity_file=key))
    with transport:
        with pytest.raises(SiteUnreachable, match=r"expired at .*renew it.*step ssh login"):
            transport.run(["true"])
        subprocess.run(
            [
                SSH_KEYGEN,
                "-q",
                "-s",
                str(sshd.key("ca")),
                "-I",
                "renewed",
                "-n",
                USER,
                "-V",
                "-5m:+1h",
                f"{key}.pub",
            ],
            check=True,
        )
        assert transport.run(["id", "-un"]).stdout == f"{USER}\n"


def test_sftp_get_file_with_progress(sshd: Sshd, remote_dir: str, tmp_path: Path) -> None:
    with SshTransport(sshd.target()) as transport:
        script = (
            f"head -c 3000000 /dev/urandom > {remote_dir}/big.bin && "
            f"mkdir -p {remote_dir}/sub/deeper && echo hello > {remote_dir}/sub/deeper/a.txt && "
            f"echo log line > {remote_dir}/slurm-1.out && ln -s slurm-1.out {remote_dir}/latest"
        )
        assert transport.run(["sh", "-c", script]).ok
        remote_sum = transport.run(["sha256sum", f"{remote_dir}/big.bin"]).stdout.split()[0]

        calls: list[tuple[int, int]] = []
        size = transport.get_file(
            f"{remote_dir}/big.bin", tmp_path / "big.bin", lambda done, total: calls.append((done, total))
        )
        assert size == 3_000_000
        assert hashlib.sha256((tmp_path / "big.bin").read_bytes()).hexdigest() == remote_sum
        assert calls[-1] == (3_000_000, 3_000_000)
        assert [done for done, _ in calls] == sorted(done for done, _ in calls)
        assert not list(tmp_path.glob("*.part"))

        assert transport.read_file(f"{remote_dir}/slurm-1.out") == b"log line\n"
        assert transport.read_file(f"{remote_dir}/slurm-1.out", offset=4) == b"line\n"
        assert transport.read_file(f"{remote_dir}/slurm-1.out", offset=100) == b""
        entries = transport.list_tree(remote_dir)
        assert [(e.relpath, e.is_dir) for e in entries] == [
            ("big.bin", False),
            ("latest", False),
            ("slurm-1.out", False),
            ("sub", True),
            ("sub/deeper", True),
            ("sub/deeper/a.txt", False),
        ]
        tree_calls: list[tuple[int, int]] = []
        copied = transport.get_tree(
            remote_dir, tmp_path / "tree", lambda done, total: tree_calls.append((done, total))
        )
        assert len(copied) == 6
        assert (tmp_path / "tree/sub/deeper/a.txt").read_text() == "hello\n"
        assert (tmp_path / "tree/latest").read_text() == "log line\n"
        total = 3_000_000 + len("hello\n") + 2 * len("log line\n")
        assert tree_calls[0] == (0, total) and tree_calls[-1] == (total, total)

        with pytest.raises(FileNotFoundError):
            transport.read_file(f"{remote_dir}/nope")
        assert transport.connect_count == 1


def test_known_hosts_with_markers_and_junk_still_works(sshd: Sshd) -> None:
    # paramiko's own loader gives up on the whole file at a @cert-authority line.
    messy = sshd.root / "messy_known_hosts"
    messy.write_text(
        "# comment\n"
        f"@cert-authority *.example.org {_public(sshd.key('ca'))}\n"
        "garbage line\n"
        "host.example ssh-ed25519 not-base64!!\n" + sshd.known_hosts.read_text()
    )
    with SshTransport(sshd.target(known_hosts=messy)) as transport:
        assert transport.run(["true"]).ok


def test_revoked_host_key_is_refused(sshd: Sshd) -> None:
    revoked = sshd.root / "revoked_known_hosts"
    revoked.write_text(
        sshd.known_hosts.read_text() + f"@revoked [127.0.0.1]:{sshd.port} {_public(sshd.key('host_key'))}\n"
    )
    transport = SshTransport(sshd.target(known_hosts=revoked))
    with transport, pytest.raises(HostKeyRejected, match="marked @revoked"):
        transport.run(["true"])


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_proxy_command_from_ssh_config(sshd: Sshd) -> None:
    config = sshd.root / "proxycommand_config"
    ssh_options = (
        f"-i {sshd.client_key} -o BatchMode=yes -o UserKnownHostsFile={sshd.known_hosts} "
        "-o GlobalKnownHostsFile=/dev/null"
    )
    config.write_text(
        "Host behind\n"
        "    HostName 127.0.0.1\n"
        f"    Port {sshd.port}\n"
        f"    User {USER}\n"
        f"    ProxyCommand ssh {ssh_options} -p {sshd.port} -W %h:%p {USER}@127.0.0.1\n"
    )
    logins_before = sshd.logins()
    target = SshTarget(
        site="proxied",
        host="behind",
        identity_file=sshd.client_key,
        known_hosts=sshd.known_hosts,
        ssh_config_path=config,
        use_agent=False,
    )
    with SshTransport(target) as transport:
        assert transport.run(["echo", "through", "a", "command"]).stdout == "through a command\n"
    time.sleep(0.2)
    assert sshd.logins() - logins_before == 2


@pytest.mark.skipif(
    shutil.which("ssh-agent") is None or shutil.which("ssh-add") is None,
    reason="needs ssh-agent and ssh-add",
)
def test_certificate_held_by_ssh_agent(sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The smallstep flow (`step ssh login`) leaves key + certificate in the agent only.
    agent_socket = tmp_path / "agent.sock"
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(agent_socket)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while not agent_socket.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        env = {**os.environ, "SSH_AUTH_SOCK": str(agent_socket)}
        subprocess.run(["ssh-add", str(sshd.key("cert_key"))], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(agent_socket))
        target = sshd.target(identity_file=sshd.root / "no_such_key", use_agent=True)
        with SshTransport(target) as transport:
            assert transport.run(["id", "-un"]).stdout == f"{USER}\n"
    finally:
        agent.terminate()
        agent.wait(5)
