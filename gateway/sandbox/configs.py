"""Pure renderers for every file the sandbox writes, and where each file lives.

Nothing here touches the disk, the network or the clock: each function turns
site definitions (``gateway.sandbox.sites``) and a layout into text, so the
output is golden-tested byte for byte. ``gateway.sandbox.manager`` and the modules it
is split into do the I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from gateway.record import Record
from gateway.sandbox.sites import (
    FAKE_GPU_MODEL,
    GPU_MAX_WALLTIME,
    NODE_CORES_PER_SOCKET,
    NODE_CPUS,
    NODE_REAL_MEMORY_MB,
    NODE_SOCKETS,
    NODE_USABLE_MEMORY,
    SANDBOX_ACCOUNT,
    SANDBOX_HOST,
    SANDBOX_USER,
    STANDARD_MAX_WALLTIME,
    SandboxSite,
)

# With no controller, clients fail after about MessageTimeout - 1 s (measured:
# 2 s with 3) instead of 9 s with Slurm's default of 10, so every
# controller-down fault a test injects costs that little. Loopback messages
# take milliseconds, so 3 s still leaves a wide margin on a busy 2-core VM.
MESSAGE_TIMEOUT_S = 3
# Finished jobs stay in squeue this long (Slurm's default is 300 s). Short, so
# tests see a job leave squeue (and fall back to `sacct -c`) within half a
# minute; long enough for a poll every few seconds to see its final state.
MIN_JOB_AGE_S = 30
# Seconds between backfill passes; a pass over the sandbox's few jobs costs
# next to nothing, and its work per pass is bounded anyway (bf_max_job_test).
BACKFILL_INTERVAL_S = 2
# Slurm refuses submissions once this many jobs are in memory (its default is
# 10000). A long benchmark submits far more than MinJobAge lets it forget, so
# this must never be what stops it.
MAX_JOB_COUNT = 100000
# One work area per site: job ids restart at 1 on every cluster, and all share one home.
WORK_AREA = "/home/{user}/aif/{site}"
DATASETS_AREA = "/home/{user}/datasets"

GENERATED_HEADER = "Written by `aif sandbox up`, rewritten on every start: do not edit."


class SandboxLayout(Record):
    """Where every sandbox file lives, given the aif home (all state under ``home/sandbox``)."""

    home: Path
    # Where the state really lives when ``home`` is not enterable by the sandbox
    # user (e.g. /root/.aif): then ``home/sandbox`` is a symlink to it.
    real_root: Path | None = None

    @property
    def root(self) -> Path:
        return self.real_root if self.real_root is not None else self.home / "sandbox"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    # munge: one munged serves the three clusters and every client.
    @property
    def munge_dir(self) -> Path:
        return self.root / "munge"

    @property
    def munge_key(self) -> Path:
        return self.munge_dir / "munge.key"

    @property
    def munge_socket(self) -> Path:
        return self.munge_dir / "munge.socket.2"

    @property
    def fakegpu_dir(self) -> Path:
        return self.root / "fakegpu"

    def fake_gpu(self, index: int) -> Path:
        return self.fakegpu_dir / f"nvidia{index}"

    # ssh: one sshd, one port per site.
    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    @property
    def host_key(self) -> Path:
        return self.ssh_dir / "ssh_host_ed25519_key"

    @property
    def client_key(self) -> Path:
        return self.ssh_dir / "client_key"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def sshd_config(self) -> Path:
        return self.ssh_dir / "sshd_config"

    # Run state: removed by `down`, wiped by a fresh `up`.
    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def supervisor_state(self) -> Path:
        return self.run_dir / "supervisor.json"

    @property
    def supervisor_plan(self) -> Path:
        return self.run_dir / "plan.json"

    @property
    def supervisor_socket(self) -> Path:
        """Where the supervisor takes stop/start requests (fault injection, root only)."""
        return self.run_dir / "supervisor.sock"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def supervisor_log(self) -> Path:
        return self.log_dir / "supervisor.log"

    def daemon_output(self, daemon: str) -> Path:
        """Where the supervisor sends one daemon's stdout and stderr."""
        return self.log_dir / f"{daemon}.out"

    # One directory per cluster.
    def site_dir(self, site: SandboxSite) -> Path:
        return self.root / site.cluster

    def slurm_conf(self, site: SandboxSite) -> Path:
        return self.site_dir(site) / "etc" / "slurm.conf"

    def gres_conf(self, site: SandboxSite) -> Path:
        # slurmd looks for gres.conf next to slurm.conf.
        return self.site_dir(site) / "etc" / "gres.conf"

    def cgroup_conf(self, site: SandboxSite) -> Path:
        # slurmd reads cgroup.conf next to slurm.conf too.
        return self.site_dir(site) / "etc" / "cgroup.conf"

    def state_dir(self, site: SandboxSite) -> Path:
        return self.site_dir(site) / "state"

    def spool_dir(self, site: SandboxSite) -> Path:
        return self.site_dir(site) / "spool"

    def jobcomp_file(self, site: SandboxSite) -> Path:
        return self.site_dir(site) / "jobcomp.txt"

    # What the gateway reads, outside the sandbox directory.
    @property
    def profiles_dir(self) -> Path:
        return self.home / "profiles"

    def profile(self, site: SandboxSite) -> Path:
        return self.profiles_dir / f"{site.name}.toml"

    @property
    def user_config(self) -> Path:
        return self.home / "config.d" / "sandbox.toml"


class SandboxBinaries(Record):
    """Absolute paths of the daemons the supervisor starts."""

    munged: str = "/usr/sbin/munged"
    slurmctld: str = "/usr/sbin/slurmctld"
    slurmd: str = "/usr/sbin/slurmd"
    sshd: str = "/usr/sbin/sshd"


def slurmctld_daemon(site: SandboxSite) -> str:
    return f"slurmctld-{site.cluster}"


def slurmd_daemon(node_name: str) -> str:
    return f"slurmd-{node_name}"


MUNGED_DAEMON = "munged"
SSHD_DAEMON = "sshd"


# --- Slurm -----------------------------------------------------------------


def render_slurm_conf(site: SandboxSite, layout: SandboxLayout, *, hostname: str, plugin_dir: str) -> str:
    """slurm.conf of one sandbox cluster; ``hostname`` is `hostname -s` (slurmctld insists)."""
    run = layout.run_dir
    log = layout.log_dir
    c = site.cluster
    lines = [
        f"# Slurm cluster {c} of the aif sandbox ({site.name}). {GENERATED_HEADER}",
        f"ClusterName={c}",
        f"SlurmctldHost={hostname}({SANDBOX_HOST})",
        f"SlurmctldPort={site.slurmctld_port}",
        # Each node has its own Port= below; this is only the default.
        f"SlurmdPort={site.nodes[0].slurmd_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # The sandbox's own munged: the three clusters and all clients share it.
        f"AuthInfo=socket={layout.munge_socket}",
        f"StateSaveLocation={layout.state_dir(site)}",
        f"SlurmdSpoolDir={layout.spool_dir(site)}/%n",
        f"SlurmctldPidFile={run}/{c}-slurmctld.pid",
        f"SlurmdPidFile={run}/{c}-slurmd-%n.pid",
        f"SlurmctldLogFile={log}/{c}-slurmctld.log",
        # slurmstepd logs here too: without a file its messages would be lost.
        f"SlurmdLogFile={log}/{c}-slurmd-%n.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        # No slurmdbd: finished jobs are read with `sacct -c` from the jobcomp file,
        # which the manager lets the sandbox group write (sacct -c opens it read-write).
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={layout.jobcomp_file(site)}",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "SchedulerType=sched/backfill",
        # Slurm's default batch_sched_delay=3 makes every job wait 3 s before it starts.
        # A node coming back (resume, a fresh slurmd) does not wake the main
        # scheduler: jobs that waited for it start at the next backfill pass,
        # every bf_interval (default 30 s, measured: up to 28 s after a resume).
        f"SchedulerParameters=batch_sched_delay=0,bf_interval={BACKFILL_INTERVAL_S}",
        # Lets a small VM declare 64 CPUs and 250 GiB per node.
        "SlurmdParameters=config_overrides",
        # Slurm 22.05 resolves every address (NodeAddr=127.0.0.1 too, and the
        # wildcard slurmd listens on) with getaddrinfo(AF_INET, AI_ADDRCONFIG).
        # Where no IPv4 address but 127.0.0.1 is configured (a network namespace
        # or container with only loopback) glibc answers "Name or service not
        # known", and slurmd dies: "Unable to bind listen port: Address family not
        # supported by protocol". With IPv6 enabled Slurm asks for AF_UNSPEC, which
        # resolves there too; the daemons then listen on [::] (dual-stack).
        "CommunicationParameters=EnableIPv6",
        f"MessageTimeout={MESSAGE_TIMEOUT_S}",
        f"MinJobAge={MIN_JOB_AGE_S}",
        f"MaxJobCount={MAX_JOB_COUNT}",
        # A node that went down comes back by itself once its slurmd registers.
        "ReturnToService=2",
        "MpiDefault=none",
        "MailProg=/bin/true",
        # sprio only works with multifactor (all weights stay 0 without slurmdbd).
        "PriorityType=priority/multifactor",
        "SwitchType=switch/none",
        f"PluginDir={plugin_dir}",
    ]
    if site.has_gpus:
        lines.append("GresTypes=gpu")
    gres = f" Gres=gpu:{site.gpus_per_node}" if site.has_gpus else ""
    for node in site.nodes:
        lines.append(
            f"NodeName={node.name} NodeHostname={hostname} NodeAddr={SANDBOX_HOST}"
            f" Port={node.slurmd_port} CPUs={NODE_CPUS} Boards=1 SocketsPerBoard={NODE_SOCKETS}"
            f" CoresPerSocket={NODE_CORES_PER_SOCKET} ThreadsPerCore=1"
            f" RealMemory={NODE_REAL_MEMORY_MB}{gres} State=UNKNOWN"
        )
    nodes = ",".join(site.node_names)
    lines.append(
        f"PartitionName=standard Nodes={nodes} Default=YES MaxTime={STANDARD_MAX_WALLTIME}"
        " DefMemPerCPU=1000 State=UP"
    )
    if site.has_gpus:
        lines.append(f"PartitionName=gpu Nodes={nodes} MaxTime={GPU_MAX_WALLTIME} DefMemPerCPU=1000 State=UP")
    return "\n".join(lines) + "\n"


def render_gres_conf(site: SandboxSite, layout: SandboxLayout) -> str:
    """gres.conf: the fake GPUs are symlinks to /dev/null (a File= is required, see the notes)."""
    lines = [f"# GPUs of sandbox cluster {site.cluster}. {GENERATED_HEADER}", "AutoDetect=off"]
    if site.has_gpus:
        last = site.gpus_per_node - 1
        files = f"{layout.fakegpu_dir}/nvidia[0-{last}]"
        lines.extend(f"NodeName={node} Name=gpu File={files}" for node in site.node_names)
    return "\n".join(lines) + "\n"


def render_cgroup_conf(site: SandboxSite) -> str:
    """cgroup.conf: name the cgroup plugin, so slurmd does not look for cgroups at all.

    The sandbox uses no cgroup (proctrack/linuxproc, task/none), but slurmd
    22.05 still loads a cgroup plugin at start. Left to autodetect it, slurmd
    fails where no cgroup file system is mounted, as under `ip netns exec`
    (which mounts a fresh /sys) and in some containers: "No filesystem mounted
    on /sys/fs/cgroup", "slurmd initialization failed". cgroup/v1 only touches
    cgroups when a cgroup plugin asks, which none here does.
    """
    return f"# cgroups of sandbox cluster {site.cluster}. {GENERATED_HEADER}\nCgroupPlugin=cgroup/v1\n"


# --- sshd ------------------------------------------------------------------


def render_sshd_config(sites: Sequence[SandboxSite], layout: SandboxLayout) -> str:
    """One sshd, one port per site; each port's sessions get that site's SLURM_CONF."""
    lines = [f"# sshd of the aif sandbox. {GENERATED_HEADER}"]
    lines.extend(f"Port {site.ssh_port}" for site in sites)
    lines += [
        f"ListenAddress {SANDBOX_HOST}",
        f"HostKey {layout.host_key}",
        f"PidFile {layout.run_dir}/sshd.pid",
        # Key-only logins as the sandbox user; no PAM, so the account must not be
        # locked ('*' password, set by the manager).
        "UsePAM no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "AuthorizedKeysFile .ssh/authorized_keys",
        "PermitRootLogin no",
        f"AllowUsers {SANDBOX_USER}",
        "PrintMotd no",
        "X11Forwarding no",
        # Benchmarks open many connections and multiplexed sessions at once.
        "MaxStartups 100",
        "MaxSessions 100",
        "Subsystem sftp /usr/lib/openssh/sftp-server",
    ]
    for site in sites:
        lines += [
            f"Match LocalPort {site.ssh_port}",
            f"    SetEnv SLURM_CONF={layout.slurm_conf(site)}",
        ]
    return "\n".join(lines) + "\n"


def render_known_hosts(host_public_key: str, sites: Sequence[SandboxSite]) -> str:
    """known_hosts for the sandbox host key, in ``[127.0.0.1]:PORT`` form for every port.

    ``host_public_key`` is the content of the ``.pub`` file ("ssh-ed25519 AAAA... comment").
    """
    fields = host_public_key.split()
    if len(fields) < 2:
        raise ValueError(f"not an OpenSSH public key: {host_public_key!r}")
    key = f"{fields[0]} {fields[1]}"
    return "".join(f"[{SANDBOX_HOST}]:{site.ssh_port} {key}\n" for site in sites)


# --- The supervisor's plan -------------------------------------------------


def render_supervisor_plan(
    sites: Sequence[SandboxSite], layout: SandboxLayout, binaries: SandboxBinaries
) -> str:
    """plan.json: the daemons ``gateway.sandbox.supervisor`` starts, in order.

    munged comes first and the supervisor waits for its socket, since every
    Slurm daemon authenticates through it. All daemons run in the foreground
    so that they stay the supervisor's children.
    """
    m = layout.munge_dir
    processes: list[dict[str, object]] = [
        {
            "name": MUNGED_DAEMON,
            "argv": [
                binaries.munged,
                "-F",
                f"--socket={layout.munge_socket}",
                f"--key-file={layout.munge_key}",
                f"--log-file={m}/munged.log",
                f"--pid-file={m}/munged.pid",
                f"--seed-file={m}/munged.seed",
            ],
            "env": {},
            "wait_for": str(layout.munge_socket),
        }
    ]
    for site in sites:
        conf = str(layout.slurm_conf(site))
        processes.append(
            {
                "name": slurmctld_daemon(site),
                "argv": [binaries.slurmctld, "-D", "-f", conf],
                "env": {"SLURM_CONF": conf},
                "wait_for": None,
            }
        )
    for site in sites:
        conf = str(layout.slurm_conf(site))
        for node in site.node_names:
            processes.append(
                {
                    "name": slurmd_daemon(node),
                    "argv": [binaries.slurmd, "-D", "-f", conf, "-N", node],
                    "env": {"SLURM_CONF": conf},
                    "wait_for": None,
                }
            )
    processes.append(
        {
            "name": SSHD_DAEMON,
            "argv": [binaries.sshd, "-D", "-e", "-f", str(layout.sshd_config)],
            "env": {},
            "wait_for": None,
        }
    )
    for process in processes:
        process["output"] = str(layout.daemon_output(str(process["name"])))
    plan = {"root": str(layout.root), "processes": processes}
    return json.dumps(plan, indent=2) + "\n"


# --- What the gateway reads: site profiles and the user config -------------


def _toml_str(value: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes; \uXXXX for controls).
    return json.dumps(value, ensure_ascii=False)


def _toml_str_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"


def _toml_bool(value: bool) -> str:
    return "true" if value else "false"


class ProfilePartition(Record):
    """One [[partitions]] entry of a sandbox profile."""

    name: str
    gpus_per_node: int
    gpu_model: str
    max_walltime: str
    max_nodes: int


def profile_partitions(site: SandboxSite) -> tuple[ProfilePartition, ...]:
    """The partitions a profile lists, smallest first as the schema asks.

    ``standard`` is listed without GPUs even where its nodes have some: the
    gateway sends CPU jobs only to GPU-less partitions and GPU jobs to ``gpu``.
    """
    standard = ProfilePartition("standard", 0, "", STANDARD_MAX_WALLTIME, len(site.nodes))
    if not site.has_gpus:
        return (standard,)
    gpu = ProfilePartition("gpu", site.gpus_per_node, FAKE_GPU_MODEL, GPU_MAX_WALLTIME, len(site.nodes))
    return (standard, gpu)


def render_profile_toml(site: SandboxSite) -> str:
    """The site profile (docs/profile-schema.md, version 1) of one sandbox site."""
    nodes = len(site.nodes)
    gpus = f"{site.gpus_per_node} fake GPUs" if site.has_gpus else "no GPUs"
    out = [
        f"# Site profile of {site.name}, a cluster of the local aif sandbox.",
        f"# {GENERATED_HEADER}",
        "schema_version = 1",
        "",
        "[site]",
        f"name = {_toml_str(site.name)}",
        f"factory = {_toml_str(site.factory)}",
        f"system = {_toml_str('local Slurm 22.05')}",
        'country = "XX"',
        f"operator = {_toml_str('aif sandbox')}",
        f"sectors = {_toml_str_list(site.sectors)}",
        f"max_sensitivity = {_toml_str(site.max_sensitivity)}",
        'batch_system = "slurm"',
        "",
        "[access]",
        f"host = {_toml_str(SANDBOX_HOST)}",
        f"port = {site.ssh_port}",
        'auth = "ssh-key"',
        "notes = "
        + _toml_str(
            f"aif sandbox: sshd on {SANDBOX_HOST}:{site.ssh_port}, whose sessions see Slurm"
            f" cluster {site.cluster}; log in as {SANDBOX_USER} with the sandbox client key"
        ),
        "",
        "[account]",
        "required = false",
        'pattern = ".*"',
        f"example = {_toml_str(SANDBOX_ACCOUNT)}",
        "",
        "[slurm]",
        'gpu_request = "gpus-per-node"',
        "send_memory = true",
        "cpus_per_gpu = 0",
        "enforce_cpus_per_gpu = false",
        "qos_required = false",
        'accounting = "jobcomp"',
        f"shebang = {_toml_str('#!/bin/bash -l')}",
        f"work_area = {_toml_str(WORK_AREA)}",
        "submit_concurrency = 2",
    ]
    for partition in profile_partitions(site):
        out += [
            "",
            "[[partitions]]",
            f"name = {_toml_str(partition.name)}",
            f"gpus_per_node = {partition.gpus_per_node}",
            f"gpu_model = {_toml_str(partition.gpu_model)}",
            f"cpus_per_node = {NODE_CPUS}",
            f"memory_per_node = {_toml_str(NODE_USABLE_MEMORY)}",
            f"max_walltime = {_toml_str(partition.max_walltime)}",
            f"max_nodes = {partition.max_nodes}",
            "whole_node = false",
            'qos = ""',
        ]
    out += [
        "",
        "[environment]",
        "# The sandbox has neither environment modules nor a container runtime.",
        "setup = []",
        'module_command = ""',
        "container_setup = []",
        "container_exec = []",
    ]
    for dataset in site.datasets:
        out += [
            "",
            "[[datasets]]",
            f"name = {_toml_str(dataset.name)}",
            f"path = {_toml_str(f'{DATASETS_AREA}/{dataset.name}')}",
            f"size = {_toml_str(dataset.size)}",
            f"sensitivity = {_toml_str(dataset.sensitivity)}",
        ]
    references = [
        f"aif sandbox: Slurm 22.05 cluster {site.cluster} started on this machine by"
        " `aif sandbox up` (gateway/sandbox/sites.py)",
    ]
    assumptions = [
        f"{nodes} {'node' if nodes == 1 else 'nodes'} of {NODE_CPUS} CPUs, {NODE_USABLE_MEMORY}"
        f" and {gpus} each, declared to Slurm (SlurmdParameters=config_overrides):"
        " not real hardware",
        "datasets are empty placeholder directories; their sizes are nominal",
    ]
    out += [
        "",
        "[sources]",
        f"references = {_toml_str_list(references)}",
        f"assumptions = {_toml_str_list(assumptions)}",
    ]
    return "\n".join(out) + "\n"


def render_user_config_toml(sites: Sequence[SandboxSite], layout: SandboxLayout) -> str:
    """config.d/sandbox.toml: how this user reaches each sandbox site."""
    out = [
        "# How to reach the local aif sandbox sites.",
        f"# {GENERATED_HEADER}",
    ]
    for site in sites:
        out += [
            "",
            f"[sites.{site.name}]",
            # Slurm accepts --account without accounting (and lowercases it).
            f"account = {_toml_str(SANDBOX_ACCOUNT)}",
            f"user = {_toml_str(SANDBOX_USER)}",
            f"identity_file = {_toml_str(str(layout.client_key))}",
            f"known_hosts = {_toml_str(str(layout.known_hosts))}",
            f"host = {_toml_str(SANDBOX_HOST)}",
            f"port = {site.ssh_port}",
            f"slurm_conf = {_toml_str(str(layout.slurm_conf(site)))}",
        ]
    return "\n".join(out) + "\n"
