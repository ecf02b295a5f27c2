"""Golden batch scripts: the issue's GPU example and a CPU job, rendered for every shipped site.

Regenerate after a deliberate change with AIF_UPDATE_GOLDEN=1 and review the diff:
each file is exactly what that site's Slurm would be given.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.errors import NoFit
from gateway.profiles import load_profile, shipped_profiles_dir
from gateway.rendering import render_batch_script
from gateway.spec import load_spec

TESTS = Path(__file__).resolve().parents[1]
GOLDEN = TESTS / "golden" / "render"
SITES = ["lumi", "hammerhai", "pharos", "it4lia", "meluxina", "bsc", "mimer"]
# Accounts in each site's documented format (MareNostrum 5's example at BSC).
ACCOUNTS = {
    "lumi": "project_465000123",
    "hammerhai": "hlrs-ai-0001",
    "pharos": "pr0001",
    "it4lia": "AIFAC_F02_378",
    "meluxina": "p200981",
    "bsc": "ehpc536",
    "mimer": "berzelius-2025-123",
}


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("AIF_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"missing golden file {path}: run with AIF_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file"


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("example", ["gpu-example", "cpu-example"])
def test_golden_script_per_site(site: str, example: str) -> None:
    profile = load_profile(shipped_profiles_dir() / f"{site}.toml")
    spec = load_spec(TESTS / "data" / "specs" / f"{example}.toml")
    # the spec's hash and path vary by checkout; pin them for a stable comment line
    spec = type(spec)(**{**spec.__dict__, "source": f"{example}.toml", "sha256": "0" * 64})
    try:
        text = render_batch_script(spec, profile, account=ACCOUNTS[site], user="alice").script
    except NoFit as exc:
        text = f"# does not fit: {exc.message}\n"
    check_golden(f"{site}-{example}.sh", text)


def test_every_site_renders_the_gpu_example() -> None:
    """The issue's GPU example must fit every factory (BSC via its CPUs-per-GPU rule)."""
    for site in SITES:
        assert not (GOLDEN / f"{site}-gpu-example.sh").read_text().startswith("# does not fit")
