"""What each command imports at start-up: the discipline bench/startup.py measures, held
without timing anything.

Each command runs in a fresh interpreter exactly as the console script runs it
(``from gateway.cli import main; sys.exit(main())``), and reports the modules it
had imported when it exited.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from gateway.cli.app import LOCAL_COMMANDS, AifGroup, load_all_commands
from gateway.cli.app import main as group
from gateway.cli.registry import COMMANDS

REPO = Path(__file__).resolve().parents[2]
ONE_LINE_SPEC = 'job = { name = "hello", command = ["hostname"] }\n'
LUMI_ACCOUNT = "project_465000123"  # the example in profiles/lumi.toml

# Run as the console script runs it; atexit reports sys.modules at the very end (json is
# imported only then, so that whether aif imported it shows).
RUN_AS_AIF = """
import atexit, sys
out = sys.argv.pop(1)
def report():
    names = sorted(sys.modules)
    import json
    open(out, "w").write(json.dumps(names))
atexit.register(report)
sys.argv[0] = "aif"
from gateway.cli import main
sys.exit(main())
"""

COMMAND_MODULES = {f"gateway.cli.{entry.module}" for entry in COMMANDS.values()}
SITE_LAYERS = (
    "gateway.context",
    "gateway.site",
    "gateway.submission",
    "gateway.status",
    "gateway.federation",
)


def run_aif(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``aif ARGS`` in a fresh interpreter; its result and the modules it imported."""
    modules_file = tmp_path / "modules.json"
    result = subprocess.run(
        [sys.executable, "-c", RUN_AS_AIF, str(modules_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, set(json.loads(modules_file.read_text()))


def loaded(modules: set[str], *names: str) -> list[str]:
    """Which of ``names`` (or a module inside one) were imported."""
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_version_is_answered_before_click_is_imported(tmp_path: Path) -> None:
    result, modules = run_aif(tmp_path, "--version")
    assert result.returncode == 0 and result.stdout == "aif, version 0.1.0\n"
    assert loaded(modules, "click", "typing", "gateway.cli.app", "gateway.errors", "gateway.home") == []


def test_version_among_other_arguments_is_clicks_and_says_the_same(tmp_path: Path) -> None:
    result, modules = run_aif(tmp_path, "-v", "--version")
    assert result.returncode == 0 and result.stdout == "aif, version 0.1.0\n"
    assert "click" in modules


def test_help_lists_every_command_without_importing_any(tmp_path: Path) -> None:
    result, modules = run_aif(tmp_path, "--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert f"\n  {name} " in result.stdout, name
    assert loaded(modules, *COMMAND_MODULES, "rich", "paramiko", "gateway.ledger", "gateway.api") == []


def test_list_json_reads_the_ledger_only(tmp_path: Path) -> None:
    result, modules = run_aif(tmp_path, "list", "--json")
    assert result.returncode == 0 and json.loads(result.stdout) == []
    assert "gateway.ledger" in modules
    unneeded = ("rich", "paramiko", "invoke", "gateway.journal", "gateway.slurm", *SITE_LAYERS)
    assert loaded(modules, *unneeded) == []
    assert loaded(modules, *COMMAND_MODULES) == ["gateway.cli.listing"]


def test_render_imports_no_site_transport_nor_ledger(tmp_path: Path) -> None:
    spec = tmp_path / "hello.toml"
    spec.write_text(ONE_LINE_SPEC)
    result, modules = run_aif(tmp_path, "render", str(spec), "--site", "lumi", "--account", LUMI_ACCOUNT)
    assert result.returncode == 0 and "#SBATCH" in result.stdout
    unneeded = ("rich", "paramiko", "invoke", "sqlite3", "gateway.ledger", "gateway.api", *SITE_LAYERS)
    # The spec's digest without OpenSSL (hashlib), JSON only for --json, paths as text (pathlib
    # would import urllib.parse and ipaddress).
    unneeded += ("hashlib", "_hashlib", "json", "pathlib", "urllib", "getpass")
    assert loaded(modules, *unneeded) == []
    assert loaded(modules, *COMMAND_MODULES) == ["gateway.cli.foundation"]


def test_the_cycle_collector_stays_off_through_local_commands_only() -> None:
    """Off from start-up on (gateway.cli); the commands that may run long turn it back on."""
    assert set(COMMANDS) >= LOCAL_COMMANDS
    assert {COMMANDS[name].module for name in LOCAL_COMMANDS} <= {"foundation", "listing", "federation"}
    collecting = gc.isenabled()
    try:
        for name in COMMANDS:
            gc.disable()
            with click.Context(group, info_name="aif") as ctx:
                group.resolve_command(ctx, [name])
            assert gc.isenabled() is (name not in LOCAL_COMMANDS), name
    finally:
        (gc.enable if collecting else gc.disable)()


def test_render_runs_without_a_collection_and_leaves_the_collector_on(tmp_path: Path) -> None:
    spec = tmp_path / "hello.toml"
    spec.write_text(ONE_LINE_SPEC)
    script = (
        "import gc, sys\n"
        "from gateway.cli import main\n"
        "started = []\n"
        "gc.callbacks.append(lambda phase, info: phase == 'start' and started.append(info))\n"
        f"args = ['render', {str(spec)!r}, '--site', 'lumi', '--account', {LUMI_ACCOUNT!r}]\n"
        "try:\n    main(args)\nexcept SystemExit:\n    pass\n"
        "print(len(started), gc.isenabled())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "#SBATCH" in result.stdout, result.stderr
    assert result.stdout.splitlines()[-1] == "0 True"


def test_an_unknown_command_still_gets_the_closest_name(tmp_path: Path) -> None:
    result, _ = run_aif(tmp_path, "lst")
    assert result.returncode == 2
    assert "No such command 'lst'. Did you mean 'list'?" in result.stderr


# -- ssh_config's Match exec: invoke only when a config has one ------------------------------

SSH_CONFIG = """
Host plain
    HostName plain.example
Match host runs exec "true"
    HostName ran.example
Match host skips !exec "true"
    HostName skipped.example
"""

RESOLVE = """
import json, sys
from pathlib import Path
from gateway.transports.ssh import SshTarget, resolve_route
config, host = Path(sys.argv[1]), sys.argv[2]
before = "invoke" in sys.modules
route = resolve_route(SshTarget(site="s", host=host, ssh_config_path=config))
print(json.dumps([before, route[-1].hostname, "invoke" in sys.modules]))
"""


def resolve(config: Path, host: str) -> tuple[bool, str, bool]:
    """In a fresh interpreter: invoke imported before resolving, the hostname, invoke after."""
    out = subprocess.run(
        [sys.executable, "-c", RESOLVE, str(config), host], capture_output=True, text=True, check=True
    ).stdout
    before, hostname, after = json.loads(out)
    return before, hostname, after


def test_the_ssh_transport_imports_paramiko_without_invoke(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("Host plain\n    HostName plain.example\n")
    assert resolve(config, "plain") == (False, "plain.example", False)


@pytest.mark.parametrize(("host", "hostname"), [("runs", "ran.example"), ("skips", "skips")])
def test_match_exec_runs_its_command_through_invoke(tmp_path: Path, host: str, hostname: str) -> None:
    config = tmp_path / "config"
    config.write_text(SSH_CONFIG)
    assert resolve(config, host) == (False, hostname, True)


def test_match_exec_in_an_included_file_is_seen(tmp_path: Path) -> None:
    (tmp_path / "extra").write_text(SSH_CONFIG)
    config = tmp_path / "config"
    config.write_text(f"Include {tmp_path / 'extra'}\n")
    assert resolve(config, "runs") == (False, "ran.example", True)


# -- one source of truth for the commands' summaries -----------------------------------------


def test_the_registry_names_every_command_and_its_module() -> None:
    load_all_commands()
    assert isinstance(group, AifGroup)
    assert set(group.commands) == set(COMMANDS)
    for name, entry in COMMANDS.items():
        command = group.commands[name]
        assert command.callback is not None
        assert command.callback.__module__ == f"gateway.cli.{entry.module}", name
        assert command.help is not None and command.help.startswith(entry.summary), name


def test_help_lists_the_commands_as_click_would_list_them_loaded() -> None:
    """The stand-ins in `aif --help` give click's own listing of the loaded commands."""
    load_all_commands()
    with click.Context(group, info_name="aif") as ctx:
        lazy, loaded_listing = ctx.make_formatter(), ctx.make_formatter()
        group.format_commands(ctx, lazy)
        click.Group.format_commands(group, ctx, loaded_listing)
    assert lazy.getvalue() == loaded_listing.getvalue() != ""


# -- importlib.metadata: paramiko's version without it ----------------------------------------

PARAMIKO_VERSION = """
import json, sys
import gateway.transports.ssh
import paramiko
from paramiko.transport import Transport
without = "importlib.metadata" not in sys.modules and "email" not in sys.modules
from importlib import metadata
print(json.dumps([without, paramiko.__version__, metadata.version("paramiko"), Transport._CLIENT_ID]))
"""


def test_paramiko_is_imported_without_importlib_metadata_and_names_its_real_version() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PARAMIKO_VERSION], capture_output=True, text=True, check=True
    ).stdout
    without, version, real, client_id = json.loads(out)
    assert without
    assert version == real and client_id == f"paramiko_{real}"


def test_the_stand_in_finds_installed_versions_and_hands_the_rest_to_the_real_module() -> None:
    from importlib import metadata

    from gateway.transports.ssh.paramiko_import import _MetadataStandIn, installed_version

    assert installed_version("paramiko") == metadata.version("paramiko")
    assert installed_version("typing-extensions") in (None, metadata.version("typing_extensions"))
    assert installed_version("aif-no-such-distribution") is None
    stand_in = _MetadataStandIn()
    assert stand_in.version("click") == metadata.version("click")
    assert stand_in.PackageNotFoundError is metadata.PackageNotFoundError  # the real module answers
    with pytest.raises(metadata.PackageNotFoundError):
        stand_in.version("aif-no-such-distribution")
