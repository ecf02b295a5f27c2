"""Test-wide fixtures: no test ever touches the real user's home."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def aif_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point AIF_HOME at a fresh temp dir for every test."""
    home = tmp_path_factory.mktemp("aif_home")
    monkeypatch.setenv("AIF_HOME", str(home))
    yield home
