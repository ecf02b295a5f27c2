"""What the sandbox benchmarks share: Slurm commands at a site, its nodes, OpenSSH to it,
a private AIF_HOME that sees the sandbox's sites, and aif's bytecode compiled first.

The benches run as `python bench/NAME.py`, so this module is imported as `benchlib`.
"""

from __future__ import annotations

import compileall
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import gateway
from gateway.sandbox.manager import SandboxFacts, SiteAccess


def slurm(conf: str, *argv: str) -> str:
    """A Slurm command run here as root against one sandbox cluster (its SLURM_CONF)."""
    env = {**os.environ, "SLURM_CONF": conf}
    return subprocess.run(argv, env=env, check=True, capture_output=True, text=True, timeout=120).stdout


def site_nodes(conf: str) -> str:
    """The cluster's nodes, comma-separated (for scontrol update nodename=...)."""
    names = dict.fromkeys(n for n in slurm(conf, "sinfo", "-h", "-N", "-o", "%N").split() if n)
    return ",".join(names)


def compile_aif() -> None:
    """As an installed aif has them (pip compiles on install): PYTHONDONTWRITEBYTECODE would
    otherwise make every CLI process compile aif's modules from source."""
    compileall.compile_dir(Path(gateway.__file__).parent, quiet=1)


def private_home(facts: SandboxFacts, home: Path) -> Path:
    """A fresh AIF_HOME at ``home`` that sees the sandbox's sites (its profiles and config)."""
    for part in ("profiles", "config.d"):
        shutil.copytree(facts.aif_home / part, home / part)
    return home


def openssh(site: SiteAccess) -> list[str]:
    """OpenSSH to the site as its user, strict host keys, nothing from ~/.ssh: append a command."""
    return [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        str(site.identity_file),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"UserKnownHostsFile={site.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-p",
        str(site.ssh_port),
        f"{site.user}@{site.host}",
    ]


def write_jobs(
    work: Path, count: int, spec_text: Callable[[int], str], script: str
) -> tuple[list[str], Path]:
    """``count`` spec files (``spec_text(i)``) in ``work`` and as many copies of a plain batch
    ``script`` in ``work/scripts`` (for the loops aif is measured against)."""
    specs = []
    scripts = work / "scripts"
    scripts.mkdir()
    for i in range(count):
        spec = work / f"spec-{i:04d}.toml"
        spec.write_text(spec_text(i))
        specs.append(str(spec))
        (scripts / f"{i:04d}.sh").write_text(script)
    return specs, scripts


def local_sbatch_loop(scripts: Path, conf: str) -> None:
    """One `sbatch --parsable` per script, here on the login node: the loop users write."""
    subprocess.run(
        ["bash", "-c", f'for f in {scripts}/*.sh; do sbatch --parsable "$f" >/dev/null || exit 1; done'],
        env={**os.environ, "SLURM_CONF": conf},
        check=True,
    )
