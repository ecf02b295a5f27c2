"""The sandbox's pure renderers: golden files, plus the contracts the gateway relies on.

Regenerate the golden files after an intended change with
``AIF_UPDATE_GOLDEN=1 pytest tests/unit/test_sandbox_configs.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from gateway.sandbox.configs import (
    SandboxBinaries,
    SandboxLayout,
    profile_partitions,
    render_cgroup_conf,
    render_gres_conf,
    render_known_hosts,
    render_profile_toml,
    render_slurm_conf,
    render_sshd_config,
    render_supervisor_plan,
    render_user_config_toml,
)
from gateway.sandbox.sites import SANDBOX_SITES, SandboxSite, sandbox_ports, site_by_name

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "sandbox"
LAYOUT = SandboxLayout(Path("/AIF_HOME"))
HOSTNAME = "vm"
PLUGIN_DIR = "/usr/lib/x86_64-linux-gnu/slurm-wlm"
HOST_PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGoldenGoldenGoldenGoldenGoldenGoldenGolden0 host"
NORTH = site_by_name("sandbox-north")
SOUTH = site_by_name("sandbox-south")
EAST = site_by_name("sandbox-east")


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("AIF_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with AIF_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file"


def _site_id(site: SandboxSite) -> str:
    return site.cluster


# --- Golden files --------------------------------------------------------------


@pytest.mark.parametrize("site", SANDBOX_SITES, ids=_site_id)
def test_slurm_conf_matches_golden(site: SandboxSite) -> None:
    text = render_slurm_conf(site, LAYOUT, hostname=HOSTNAME, plugin_dir=PLUGIN_DIR)
    check_golden(f"{site.cluster}.slurm.conf", text)


@pytest.mark.parametrize("site", SANDBOX_SITES, ids=_site_id)
def test_gres_conf_matches_golden(site: SandboxSite) -> None:
    check_golden(f"{site.cluster}.gres.conf", render_gres_conf(site, LAYOUT))


@pytest.mark.parametrize("site", SANDBOX_SITES, ids=_site_id)
def test_cgroup_conf_matches_golden(site: SandboxSite) -> None:
    check_golden(f"{site.cluster}.cgroup.conf", render_cgroup_conf(site))


@pytest.mark.parametrize("site", SANDBOX_SITES, ids=_site_id)
def test_profile_matches_golden(site: SandboxSite) -> None:
    check_golden(f"{site.name}.toml", render_profile_toml(site))


def test_sshd_config_matches_golden() -> None:
    check_golden("sshd_config", render_sshd_config(SANDBOX_SITES, LAYOUT))


def test_user_config_matches_golden() -> None:
    check_golden("config.d-sandbox.toml", render_user_config_toml(SANDBOX_SITES, LAYOUT))


def test_known_hosts_matches_golden() -> None:
    check_golden("known_hosts", render_known_hosts(HOST_PUB, SANDBOX_SITES))


def test_supervisor_plan_matches_golden() -> None:
    check_golden("plan.json", render_supervisor_plan(SANDBOX_SITES, LAYOUT, SandboxBinaries()))


# --- The sites the federation layer relies on -----------------------------------


def test_the_three_sites_are_exactly_these() -> None:
    summary = {
        s.name: (s.ssh_port, s.slurmctld_port, len(s.nodes), s.gpus_per_node, s.max_sensitivity)
        for s in SANDBOX_SITES
    }
    assert summary == {
        "sandbox-north": (2231, 6817, 2, 4, "sensitive"),
        "sandbox-south": (2232, 6827, 1, 8, "internal"),
        "sandbox-east": (2233, 6837, 2, 0, "public"),
    }
    assert [n.slurmd_port for n in NORTH.nodes] == [6818, 6819]
    assert [n.slurmd_port for n in SOUTH.nodes] == [6828]
    assert [n.slurmd_port for n in EAST.nodes] == [6838, 6839]


def test_ports_are_distinct_and_avoid_the_other_helpers() -> None:
    ports = sandbox_ports()
    assert len(ports) == len(set(ports)) == 11
    assert not set(ports) & {7817, 7818, 7819, 2291}


# --- slurm.conf, gres.conf, sshd ------------------------------------------------


def _conf(site: SandboxSite) -> str:
    return render_slurm_conf(site, LAYOUT, hostname=HOSTNAME, plugin_dir=PLUGIN_DIR)


def _settings(conf: str) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in conf.splitlines()
        if line
        and not line.startswith("#")
        and " " not in line.split("=", 1)[0]
        and not line.startswith(("NodeName=", "PartitionName="))
    )


@pytest.mark.parametrize("site", SANDBOX_SITES, ids=_site_id)
def test_slurm_conf_is_self_contained_per_cluster(site: SandboxSite) -> None:
    settings = _settings(_conf(site))
    assert settings["ClusterName"] == site.cluster
    assert settings["SlurmctldHost"] == f"{HOSTNAME}(127.0.0.1)"
    assert settings["SlurmctldPort"] == str(site.slurmctld_port)
    # Jobs start at once, and at most a few seconds after their nodes come back.
    assert settings["SchedulerParameters"] == "batch_sched_delay=0,bf_interval=2"
    assert settings["JobCompType"] == "jobcomp/filetxt"
    assert settings["PriorityType"] == "priority/multifactor"
    # Controller-down faults cost about MessageTimeout per client call.
    assert int(settings["MessageTimeout"]) <= 3
    # Long benchmarks must never hit Slurm's job limit (default 10000).
    assert int(settings["MaxJobCount"]) >= 100000
    assert int(settings["MinJobAge"]) <= 60
    # Without it slurmd cannot start where only loopback is configured (see configs.py).
    assert "EnableIPv6" in settings["CommunicationParameters"].split(",")
    # Everything a cluster writes is under its own directory or names it.
    for key in ("StateSaveLocation", "SlurmdSpoolDir", "JobCompLoc"):
        assert settings[key].startswith(f"/AIF_HOME/sandbox/{site.cluster}/")
    for key in ("SlurmctldPidFile", "SlurmdPidFile", "SlurmctldLogFile", "SlurmdLogFile"):
        assert f"/{site.cluster}-" in settings[key]


@pytest.mark.parametrize("site", SANDBOX_SITES, ids=_site_id)
def test_nodes_and_partitions(site: SandboxSite) -> None:
    conf = _conf(site)
    node_lines = [line for line in conf.splitlines() if line.startswith("NodeName=")]
    assert len(node_lines) == len(site.nodes)
    for node, line in zip(site.nodes, node_lines, strict=True):
        assert f"NodeName={node.name} NodeHostname={HOSTNAME} NodeAddr=127.0.0.1" in line
        assert f" Port={node.slurmd_port} " in line
        assert " CPUs=64 " in line and " RealMemory=256000" in line
        assert (f"Gres=gpu:{site.gpus_per_node}" in line) == site.has_gpus
    partitions = re.findall(r"^PartitionName=(\S+)", conf, re.MULTILINE)
    assert partitions == (["standard", "gpu"] if site.has_gpus else ["standard"])
    assert "PartitionName=standard Nodes=" in conf and "Default=YES" in conf
    assert ("GresTypes=gpu" in conf) == site.has_gpus


def test_gres_conf_uses_fake_device_files() -> None:
    assert "NodeName=north-n2 Name=gpu File=/AIF_HOME/sandbox/fakegpu/nvidia[0-3]" in (
        render_gres_conf(NORTH, LAYOUT)
    )
    assert "File=/AIF_HOME/sandbox/fakegpu/nvidia[0-7]" in render_gres_conf(SOUTH, LAYOUT)
    assert "Name=gpu" not in render_gres_conf(EAST, LAYOUT)


def test_each_sshd_port_sees_its_own_cluster() -> None:
    config = render_sshd_config(SANDBOX_SITES, LAYOUT)
    matches = re.findall(r"^Match LocalPort (\d+)\n\s+SetEnv SLURM_CONF=(\S+)$", config, re.M)
    assert matches == [(str(s.ssh_port), str(LAYOUT.slurm_conf(s))) for s in SANDBOX_SITES]
    head = config.split("Match", 1)[0]
    assert "ListenAddress 127.0.0.1" in head and "AllowUsers aifuser" in head
    assert "PasswordAuthentication no" in head


def test_known_hosts_lists_every_port_without_the_comment() -> None:
    lines = render_known_hosts(HOST_PUB, SANDBOX_SITES).splitlines()
    key = " ".join(HOST_PUB.split()[:2])
    assert lines == [f"[127.0.0.1]:{p} {key}" for p in (2231, 2232, 2233)]
    with pytest.raises(ValueError):
        render_known_hosts("garbage", SANDBOX_SITES)


def test_plan_starts_munged_first_and_waits_for_its_socket() -> None:
    plan = json.loads(render_supervisor_plan(SANDBOX_SITES, LAYOUT, SandboxBinaries()))
    names = [p["name"] for p in plan["processes"]]
    assert names[0] == "munged" and names[-1] == "sshd"
    assert plan["processes"][0]["wait_for"] == str(LAYOUT.munge_socket)
    assert {"slurmctld-north", "slurmd-north-n2", "slurmd-south-n1", "slurmd-east-n2"} <= set(names)
    for process in plan["processes"]:
        assert process["argv"][0].startswith("/")
        # down() recognises sandbox processes by a path under the root in their argv.
        assert any(
            arg.startswith("/AIF_HOME/sandbox/") or "=/AIF_HOME/sandbox/" in arg for arg in process["argv"]
        )


# --- Profiles and user config against the documented schema ----------------------


def _schema_examples() -> tuple[dict[str, Any], dict[str, Any]]:
    """The profile and the user config examples of docs/profile-schema.md, parsed."""
    doc = (REPO / "docs" / "profile-schema.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", doc, re.S)
    assert len(blocks) >= 2
    return tomllib.loads(blocks[0]), tomllib.loads(blocks[1])


@pytest.mark.parametrize("site", SANDBOX_SITES, ids=_site_id)
def test_profile_has_exactly_the_schema_keys(site: SandboxSite) -> None:
    schema, _ = _schema_examples()
    profile = tomllib.loads(render_profile_toml(site))
    # [[qos]] is optional and the sandbox has no QOS.
    assert set(profile) == set(schema) - {"qos"}
    for key, value in profile.items():
        expected = schema[key]
        if isinstance(value, dict):
            assert set(value) == set(expected), key
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for entry in value:
                assert set(entry) == set(expected[0]), key
        else:
            assert type(value) is type(expected), key


@pytest.mark.parametrize("site", SANDBOX_SITES, ids=_site_id)
def test_profile_values(site: SandboxSite) -> None:
    profile = tomllib.loads(render_profile_toml(site))
    assert profile["schema_version"] == 1
    assert profile["site"]["name"] == site.name
    assert profile["site"]["country"] == "XX"
    assert profile["site"]["sectors"] == list(site.sectors)
    assert profile["site"]["max_sensitivity"] == site.max_sensitivity
    assert profile["access"] == profile["access"] | {"host": "127.0.0.1", "port": site.ssh_port}
    assert profile["account"]["required"] is False
    assert profile["slurm"]["accounting"] == "jobcomp"
    assert profile["slurm"]["gpu_request"] == "gpus-per-node"
    assert profile["slurm"]["work_area"] == "/home/{user}/aif/{site}"
    assert profile["environment"]["module_command"] == ""
    assert profile["environment"]["container_exec"] == []
    partitions = profile["partitions"]
    assert [p["name"] for p in partitions] == [p.name for p in profile_partitions(site)]
    standard = partitions[0]
    assert standard | {"gpus_per_node": 0, "cpus_per_node": 64, "memory_per_node": "250G"} == (standard)
    assert standard["max_walltime"] == "2-00:00:00"
    assert standard["max_nodes"] == len(site.nodes)
    if site.has_gpus:
        gpu = partitions[1]
        assert gpu["gpus_per_node"] == site.gpus_per_node and gpu["gpu_model"] == "fake"
        assert gpu["max_walltime"] == "1-00:00:00"
    for dataset, entry in zip(site.datasets, profile["datasets"], strict=True):
        assert entry == {
            "name": dataset.name,
            "path": f"/home/{{user}}/datasets/{dataset.name}",
            "size": dataset.size,
            "sensitivity": dataset.sensitivity,
        }
    assert profile["sources"]["references"]


def test_dataset_sizes_and_sectors() -> None:
    datasets = sorted((d.name, s.name, d.size) for s in SANDBOX_SITES for d in s.datasets)
    assert datasets == [
        ("ehr-demo", "sandbox-north", "50G"),
        ("news-corpus", "sandbox-south", "500G"),
        ("sensor-logs", "sandbox-east", "20G"),
        # held by two sites: the federation places by their load
        ("shared-corpus", "sandbox-north", "10G"),
        ("shared-corpus", "sandbox-south", "10G"),
    ]
    assert NORTH.sectors == ("health", "climate")
    assert SOUTH.sectors == ("finance", "language")
    assert EAST.sectors == ("manufacturing", "energy")


def test_user_config_reaches_every_site() -> None:
    _, schema = _schema_examples()
    allowed = set(schema["sites"]["lumi"])
    config = tomllib.loads(render_user_config_toml(SANDBOX_SITES, LAYOUT))
    assert set(config) == {"sites"}
    assert list(config["sites"]) == [s.name for s in SANDBOX_SITES]
    for site in SANDBOX_SITES:
        entry = config["sites"][site.name]
        assert set(entry) <= allowed
        assert entry == {
            "account": "sandbox",
            "user": "aifuser",
            "identity_file": "/AIF_HOME/sandbox/ssh/client_key",
            "known_hosts": "/AIF_HOME/sandbox/ssh/known_hosts",
            "host": "127.0.0.1",
            "port": site.ssh_port,
            "slurm_conf": f"/AIF_HOME/sandbox/{site.cluster}/etc/slurm.conf",
        }


def test_toml_strings_are_escaped() -> None:
    layout = SandboxLayout(Path('/odd "quoted" \\ home'))
    config = tomllib.loads(render_user_config_toml(SANDBOX_SITES, layout))
    assert config["sites"]["sandbox-east"]["identity_file"] == str(layout.client_key)
