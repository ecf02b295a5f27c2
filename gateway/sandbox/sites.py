"""The three sandbox sites, as plain data.

The federation layer and its tests rely on exactly these names, ports, sizes,
sectors and sensitivities: change them only together with those tests.
Everything else in the sandbox (Slurm and sshd configs, site profiles, the
user config) is rendered from these definitions by ``gateway.sandbox.configs``.
"""

from __future__ import annotations

from gateway.record import Record

SANDBOX_USER = "aifuser"
# The login user's group for the files it must write: the jobcomp files (`sacct -c`).
SANDBOX_GROUP = "aifsandbox"
SANDBOX_HOST = "127.0.0.1"
SANDBOX_ACCOUNT = "sandbox"

# What every sandbox node declares to Slurm. The VM has far fewer cores and
# less memory: SlurmdParameters=config_overrides lets slurmd believe this.
NODE_CPUS = 64
NODE_SOCKETS = 2
NODE_CORES_PER_SOCKET = 32
NODE_REAL_MEMORY_MB = 256000
# What a profile advertises as usable per node: 256000 MB is exactly 250 GiB.
NODE_USABLE_MEMORY = "250G"

STANDARD_MAX_WALLTIME = "2-00:00:00"
GPU_MAX_WALLTIME = "1-00:00:00"
FAKE_GPU_MODEL = "fake"


class SandboxNode(Record):
    """One slurmd of a sandbox cluster (all run on this host, each on its own port)."""

    name: str
    slurmd_port: int


class SandboxDataset(Record):
    """A dataset the site's profile advertises; an empty placeholder directory in the sandbox."""

    name: str
    size: str
    sensitivity: str


class SandboxSite(Record):
    """One sandbox site: its own Slurm cluster plus its own sshd port on loopback."""

    name: str  # the site name, e.g. "sandbox-north" (also the profile's file name)
    cluster: str  # Slurm's ClusterName, e.g. "north"
    factory: str
    ssh_port: int
    slurmctld_port: int
    nodes: tuple[SandboxNode, ...]
    gpus_per_node: int
    sectors: tuple[str, ...]
    max_sensitivity: str
    datasets: tuple[SandboxDataset, ...]

    @property
    def has_gpus(self) -> bool:
        return self.gpus_per_node > 0

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(node.name for node in self.nodes)


SANDBOX_SITES: tuple[SandboxSite, ...] = (
    SandboxSite(
        name="sandbox-north",
        cluster="north",
        factory="Sandbox North",
        ssh_port=2231,
        slurmctld_port=6817,
        nodes=(SandboxNode("north-n1", 6818), SandboxNode("north-n2", 6819)),
        gpus_per_node=4,
        sectors=("health", "climate"),
        max_sensitivity="sensitive",
        datasets=(
            SandboxDataset("ehr-demo", "50G", "sensitive"),
            SandboxDataset("shared-corpus", "10G", "internal"),
        ),
    ),
    SandboxSite(
        name="sandbox-south",
        cluster="south",
        factory="Sandbox South",
        ssh_port=2232,
        slurmctld_port=6827,
        nodes=(SandboxNode("south-n1", 6828),),
        gpus_per_node=8,
        sectors=("finance", "language"),
        max_sensitivity="internal",
        datasets=(
            SandboxDataset("news-corpus", "500G", "internal"),
            SandboxDataset("shared-corpus", "10G", "internal"),
        ),
    ),
    SandboxSite(
        name="sandbox-east",
        cluster="east",
        factory="Sandbox East",
        ssh_port=2233,
        slurmctld_port=6837,
        nodes=(SandboxNode("east-n1", 6838), SandboxNode("east-n2", 6839)),
        gpus_per_node=0,
        sectors=("manufacturing", "energy"),
        max_sensitivity="public",
        datasets=(SandboxDataset("sensor-logs", "20G", "public"),),
    ),
)


def sandbox_ports(sites: tuple[SandboxSite, ...] = SANDBOX_SITES) -> tuple[int, ...]:
    """Every TCP port the sandbox listens on, in a stable order."""
    ports: list[int] = []
    for site in sites:
        ports.append(site.ssh_port)
        ports.append(site.slurmctld_port)
        ports.extend(node.slurmd_port for node in site.nodes)
    return tuple(ports)


def site_by_name(name: str, sites: tuple[SandboxSite, ...] = SANDBOX_SITES) -> SandboxSite:
    """The sandbox site called ``name`` (KeyError when there is none)."""
    for site in sites:
        if site.name == name:
            return site
    raise KeyError(name)
