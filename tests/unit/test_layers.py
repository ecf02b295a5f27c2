"""Imports point down the layers only: spec -> profiles -> rendering -> transports -> site
-> federation -> ledger -> api -> cli. A module may import its own layer or any layer below."""

from __future__ import annotations

import ast
from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"

LAYERS: list[set[str]] = [
    {
        "gateway",
        "gateway.errors",
        "gateway.home",
        "gateway.pathtext",
        "gateway.record",
        "gateway.states",
        "gateway.tomlcheck",
    },
    {"gateway.spec"},
    {"gateway.config"},
    {"gateway.profiles", "gateway.profile_cache", "gateway.profile_rules"},
    {"gateway.rendering", "gateway.arrays", "gateway.slurm", "gateway.journal"},
    {"gateway.transports"},
    {"gateway.site", "gateway.pyslurm_backend"},
    {"gateway.federation"},
    {
        "gateway.ledger",
        "gateway.ledger_records",
        "gateway.ledger_schema",
        "gateway.ledger_errors",
        "gateway.ledger_reads",
        "gateway.ledger_store",
    },
    {
        "gateway.api",
        "gateway.preview",
        "gateway.lifecycle",
        "gateway.profile_check",
        "gateway.context",
        "gateway.settlement",
        "gateway.status",
        "gateway.polling",
        "gateway.submission",
        "gateway.sending",
        "gateway.placement",
    },
    {"gateway.sandbox"},
    {"gateway.cli"},
]


def layer_of(module: str) -> int:
    """The layer of the most specific LAYERS entry naming ``module`` or a package above it."""
    matches = [
        (len(member), index)
        for index, members in enumerate(LAYERS)
        for member in members
        if module == member or module.startswith(member + ".")
    ]
    assert matches, f"{module} belongs to no layer: add it to LAYERS"
    return max(matches)[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(GATEWAY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("gateway"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gateway"):
            found.add(node.module)
            # `from gateway import slurm` imports the module gateway.slurm
            if node.module == "gateway":
                found.update(f"gateway.{alias.name}" for alias in node.names)
    return found


def test_imports_point_down_the_layers() -> None:
    violations = []
    for path in sorted(GATEWAY.rglob("*.py")):
        module = module_name(path)
        own = layer_of(module)
        for imported in imports_of(path):
            if imported == "gateway" or imported == "gateway.__init__":
                continue
            if layer_of(imported) > own:
                violations.append(f"{module} imports {imported}")
    assert not violations, violations


def test_the_cli_starts_without_the_heavy_layers() -> None:
    """`aif --help` must stay fast: paramiko, rich and the lifecycle load only when used."""
    import subprocess
    import sys

    heavy = ("paramiko", "rich", "pyslurm", "gateway.lifecycle", "gateway.ledger", "sqlite3")
    code = f"import sys, gateway.cli; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
