"""The advice given for a changed host key names the known_hosts file to fix.

`ssh-keygen -R NAME` alone edits ~/.ssh/known_hosts only: the message must
say `-f FILE` for the file that really holds the old key, hashed or not.
The whole message is checked against a real sshd in
tests/integration/test_sandbox_host_key.py.
"""

from __future__ import annotations

from pathlib import Path

import paramiko

from gateway.transports import ssh

NAME = "[127.0.0.1]:2231"
# Any valid public key will do (made with ssh-keygen -t ed25519 for this test).
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINUTLdFodMtLawKSrpeDHw6gsmxrcMMYGs6KktqLbRIF"


def test_files_naming_finds_plain_and_hashed_entries(tmp_path: Path) -> None:
    line = f"{KEY}\n"
    plain, hashed, other = tmp_path / "plain", tmp_path / "hashed", tmp_path / "other"
    plain.write_text(f"# comment\n@cert-authority * {line}{NAME} {line}")
    hashed.write_text(f"{paramiko.HostKeys.hash_host(NAME)} {line}")
    other.write_text(f"[127.0.0.1]:2232,[127.0.0.1]:22310 {line}")
    missing = tmp_path / "missing"
    assert ssh._files_naming([other, plain, missing, hashed], NAME) == [plain, hashed]
    assert ssh._files_naming([other, missing], NAME) == []
