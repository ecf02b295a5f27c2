"""A sandbox site whose host key differs from the one in known_hosts: aif refuses, and says what to do.

The session's sandbox is left alone: the test works on a private AIF_HOME
(a copy of the sandbox's profiles and config) whose known_hosts holds another
key for sandbox-north. Cost: under 1 s.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.errors import HostKeyRejected
from gateway.sandbox.manager import SandboxFacts
from gateway.transports.ssh import SshTarget, SshTransport

pytestmark = pytest.mark.integration

SITE = "sandbox-north"


def fingerprint(public_key: Path) -> str:
    """SHA256:... of a .pub file, as `ssh-keygen -l` (and the gateway) shows it."""
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(public_key)], capture_output=True, text=True)
    return out.stdout.split()[1]


def test_changed_host_key_is_refused_with_both_fingerprints_and_how_to_fix_it(
    sandbox: SandboxFacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = sandbox.site(SITE)
    home = tmp_path / "home"
    shutil.copytree(sandbox.aif_home / "profiles", home / "profiles")
    shutil.copytree(sandbox.aif_home / "config.d", home / "config.d")
    monkeypatch.setenv("AIF_HOME", str(home))
    # known_hosts as it was before "the server's key changed": another ed25519 key.
    old_key = tmp_path / "old_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(old_key)], check=True)
    stale = home / "known_hosts"
    name = f"[{site.host}]:{site.ssh_port}"
    old_public = " ".join(Path(f"{old_key}.pub").read_text().split()[:2])
    stale.write_text(
        "".join(
            f"{name} {old_public}\n" if line.startswith(f"{name} ") else f"{line}\n"
            for line in site.known_hosts.read_text().splitlines()
        )
    )
    config = home / "config.d" / "sandbox.toml"
    config.write_text(config.read_text().replace(str(site.known_hosts), str(stale)))
    server_fp = fingerprint(site.known_hosts.with_name("ssh_host_ed25519_key.pub"))
    old_fp = fingerprint(Path(f"{old_key}.pub"))
    assert server_fp != old_fp

    def check(message: str) -> None:
        assert f"site {SITE}: host key for {name} has CHANGED" in message
        assert f"the server now shows {server_fp} (ssh-ed25519)" in message
        assert f"known_hosts ({stale}) has {old_fp} (ssh-ed25519)" in message
        # How to check, then how to update the file that holds the old key.
        assert "checked the new fingerprint against the ones the site publishes" in message
        assert f"`ssh-keygen -R '{name}' -f {stale}`" in message
        assert f"`ssh-keyscan -p {site.ssh_port} {site.host} >> {stale}`" in message
        assert "\n" not in message

    # The transport itself: nothing is run on a server it cannot trust.
    target = SshTarget(
        site=SITE,
        host=site.host,
        port=site.ssh_port,
        user=site.user,
        identity_file=site.identity_file,
        known_hosts=stale,
        use_ssh_config=False,
        use_agent=False,
    )
    with SshTransport(target) as transport, pytest.raises(HostKeyRejected) as caught:
        transport.run(["true"])
    check(str(caught.value))

    # What a user sees from `aif submit`: exit 5 (unreachable), the same advice.
    spec = tmp_path / "hk.toml"
    spec.write_text('[job]\nname = "hk"\ncommand = ["true"]\n[resources]\nwalltime = "00:01:00"\n')
    result = CliRunner().invoke(main, ["submit", "--site", SITE, str(spec)])
    assert result.exit_code == 5, result.output
    assert "Traceback" not in result.output
    # The job's own line gives the site's reason in full; the error line after it counts.
    [reason] = [line for line in result.stderr.splitlines() if "has CHANGED" in line]
    check(reason)
    assert result.stderr.splitlines()[-1].startswith("aif: error: ")
