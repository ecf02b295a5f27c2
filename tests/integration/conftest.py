"""The real sandbox (three Slurm clusters + sshd), brought up once per test session.

``sandbox`` (session) starts it with ``gateway.sandbox.manager.up`` and stops
it at the end; it returns ``SandboxFacts``: ``aif_home``, ``root`` and, per
site (``facts.site("sandbox-north")``), its name, cluster, host, ssh_port,
user, identity_file (the client key), known_hosts and slurm_conf.
``sandbox_home`` (function) points AIF_HOME at the sandbox's home, whose
profiles/ and config.d/ make the gateway see the three sandbox sites.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sandbox import manager
from gateway.sandbox.manager import SandboxFacts


@pytest.fixture(scope="session")
def sandbox(request: pytest.FixtureRequest) -> Iterator[SandboxFacts]:
    if os.geteuid() != 0:
        pytest.skip("the Slurm sandbox needs root (it starts slurmd and sshd)")
    # Not tmp_path_factory: pytest's temp dirs are 0700, and the sandbox user's
    # sbatch (over SSH) must reach slurm.conf and the munge socket in here.
    base = Path(tempfile.mkdtemp(prefix="aif-sandbox-"))
    os.chmod(base, 0o755)
    home = base / "aif_home"

    def progress(message: str) -> None:
        print(f"[aif sandbox] {message}", file=sys.stderr)

    logs = home / "sandbox" / "log"
    try:
        # A fresh CI machine installs the Debian packages first (about a minute).
        manager.up(home, progress=progress)
    except BaseException:
        print(f"[aif sandbox] up failed; logs kept in {logs}", file=sys.stderr)
        raise
    try:
        yield manager.facts(home)
    finally:
        manager.down(home)
        if request.session.testsfailed:
            print(f"[aif sandbox] logs kept in {logs}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def sandbox_home(sandbox: SandboxFacts, monkeypatch: pytest.MonkeyPatch) -> Path:
    """AIF_HOME = the sandbox's home for this test (overrides the per-test temp home)."""
    monkeypatch.setenv("AIF_HOME", str(sandbox.aif_home))
    return sandbox.aif_home
