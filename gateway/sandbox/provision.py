"""What ``up`` writes and creates before the supervisor starts the daemons, and after.

The rendered configs (``gateway.sandbox.configs``), the munge key, the SSH
host and client keys and known_hosts, the state directories, the login user
with its group, authorized key and datasets, and finally the site profiles
and user config the gateway reads.
"""

from __future__ import annotations

import glob
import grp
import os
import pwd
import shutil
import socket
from pathlib import Path

from gateway.errors import SandboxError
from gateway.sandbox.configs import (
    SandboxBinaries,
    SandboxLayout,
    render_cgroup_conf,
    render_gres_conf,
    render_known_hosts,
    render_profile_toml,
    render_slurm_conf,
    render_sshd_config,
    render_supervisor_plan,
    render_user_config_toml,
)
from gateway.sandbox.layout import (
    Progress,
    _last_line,
    _make_dir,
    _run,
    _user_entry,
    _which,
    _write_file,
)
from gateway.sandbox.sites import (
    SANDBOX_GROUP,
    SANDBOX_SITES,
    SANDBOX_USER,
    SandboxSite,
)

# --- Files --------------------------------------------------------------------------


def _plugin_dir() -> str:
    """Where Debian put Slurm's plugins (the directory name holds the architecture)."""
    for candidate in [*sorted(glob.glob("/usr/lib/*/slurm-wlm")), "/usr/lib/slurm-wlm"]:
        if Path(candidate, "select_cons_tres.so").exists():
            return candidate
    raise SandboxError("cannot find Slurm's plugin directory (/usr/lib/*/slurm-wlm)")


def _binaries() -> SandboxBinaries:
    found = {}
    for name in ("munged", "slurmctld", "slurmd", "sshd"):
        path = _which(name)
        if path is None:
            raise SandboxError(f"{name} is not installed")
        found[name] = path
    return SandboxBinaries(**found)


def _wipe_run_state(layout: SandboxLayout) -> None:
    """Remove what a previous run left: a node drained then would otherwise stay drained."""
    doomed = [layout.run_dir]
    for site in SANDBOX_SITES:
        doomed += [layout.state_dir(site), layout.spool_dir(site)]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)


def _ssh_keygen(path: Path, comment: str) -> None:
    if path.exists() and path.with_name(path.name + ".pub").exists():
        return  # kept across restarts so known_hosts and authorized_keys stay valid
    path.unlink(missing_ok=True)
    result = _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    if result.returncode != 0:
        raise SandboxError(f"ssh-keygen failed: {_last_line(result.stderr)}")


def _make_cluster_state_dirs(layout: SandboxLayout, site: SandboxSite) -> None:
    # slurmctld's saved jobs hold their scripts and environments: root only.
    _make_dir(layout.state_dir(site), 0o700)
    # slurmd's spool is 755 as Slurm's own default: each job's directory in it
    # belongs to the job's user, who must get to it.
    _make_dir(layout.spool_dir(site))
    for node in site.node_names:
        _make_dir(layout.spool_dir(site) / node)  # slurmd does not create it


def _prepare_files(layout: SandboxLayout) -> None:
    hostname = socket.gethostname().split(".")[0]  # `hostname -s`: slurmctld insists
    plugin_dir = _plugin_dir()
    binaries = _binaries()
    # The sandbox user reaches slurm.conf and the munge socket through root;
    # run/ holds no secret (pids, the plan) and lets any user read the status.
    for directory in (layout.root, layout.run_dir, layout.ssh_dir):
        _make_dir(directory)
    # Only root (the daemons, whoever debugs them) reads the logs.
    _make_dir(layout.log_dir, 0o700)
    # The munge socket directory must be 755: clients of every user connect to it.
    _make_dir(layout.munge_dir)
    if not layout.munge_key.exists():
        result = _run(["mungekey", "-c", "-k", str(layout.munge_key)])
        if result.returncode != 0:
            raise SandboxError(f"mungekey failed: {_last_line(result.stderr)}")
    os.chmod(layout.munge_key, 0o600)
    # Fake GPUs: gres.conf needs a File= per GPU; symlinks to /dev/null do.
    _make_dir(layout.fakegpu_dir)
    for index in range(max(site.gpus_per_node for site in SANDBOX_SITES)):
        gpu = layout.fake_gpu(index)
        if not gpu.is_symlink():
            gpu.symlink_to("/dev/null")
    for site in SANDBOX_SITES:
        _make_dir(layout.slurm_conf(site).parent)
        _make_cluster_state_dirs(layout, site)
        conf = render_slurm_conf(site, layout, hostname=hostname, plugin_dir=plugin_dir)
        _write_file(layout.slurm_conf(site), conf)
        _write_file(layout.gres_conf(site), render_gres_conf(site, layout))
        _write_file(layout.cgroup_conf(site), render_cgroup_conf(site))
        _write_file(layout.jobcomp_file(site), "", 0o600)  # a fresh job history per start
    _ssh_keygen(layout.host_key, "aif-sandbox-host")
    _ssh_keygen(layout.client_key, "aif-sandbox-client")
    host_pub = layout.host_key.with_name(layout.host_key.name + ".pub").read_text()
    _write_file(layout.known_hosts, render_known_hosts(host_pub, SANDBOX_SITES))
    _write_file(layout.sshd_config, render_sshd_config(SANDBOX_SITES, layout))
    _make_dir(Path("/run/sshd"))  # sshd's privilege separation directory, else it refuses
    _write_file(layout.supervisor_plan, render_supervisor_plan(SANDBOX_SITES, layout, binaries))


# --- The login user -----------------------------------------------------------------


def _ensure_sandbox_user(client_public_key: str, say: Progress) -> pwd.struct_passwd:
    """Create aifuser if missing and let the sandbox client key in (appending, never clobbering)."""
    entry = _user_entry(SANDBOX_USER)
    if entry is None:
        say(f"creating user {SANDBOX_USER}")
        result = _run(["useradd", "-m", "-s", "/bin/bash", SANDBOX_USER])
        if result.returncode not in (0, 9):  # 9: created meanwhile by another tool
            raise SandboxError(f"useradd {SANDBOX_USER} failed: {_last_line(result.stderr)}")
        entry = pwd.getpwnam(SANDBOX_USER)
    # With UsePAM no, sshd refuses a locked account ('!' password): '*' means no
    # password login but not locked.
    if _shadow_password(SANDBOX_USER).startswith("!"):
        result = _run(["usermod", "-p", "*", SANDBOX_USER])
        if result.returncode != 0:
            raise SandboxError(f"usermod -p '*' {SANDBOX_USER} failed: {_last_line(result.stderr)}")
    _ensure_sandbox_group(SANDBOX_USER)
    _authorize_client_key(entry, client_public_key)
    return entry


def _ensure_sandbox_group(user: str) -> None:
    """Create the sandbox group if missing and put ``user`` in it (for the jobcomp files)."""
    try:
        group = grp.getgrnam(SANDBOX_GROUP)
    except KeyError:
        result = _run(["groupadd", "--system", SANDBOX_GROUP])
        if result.returncode not in (0, 9):  # 9: created meanwhile by another tool
            raise SandboxError(f"groupadd {SANDBOX_GROUP} failed: {_last_line(result.stderr)}") from None
        group = grp.getgrnam(SANDBOX_GROUP)
    if user not in group.gr_mem:
        # New logins get the group; every sandbox session starts after this.
        result = _run(["usermod", "-a", "-G", SANDBOX_GROUP, user])
        if result.returncode != 0:
            raise SandboxError(f"usermod -a -G {SANDBOX_GROUP} {user} failed: {_last_line(result.stderr)}")


def _authorize_client_key(entry: pwd.struct_passwd, client_public_key: str) -> None:
    """Append the sandbox client key to authorized_keys unless it is there.

    Other tools share the user and add their own keys: never rewrite the file.
    """
    ssh_dir = Path(entry.pw_dir) / ".ssh"
    if not ssh_dir.is_dir():
        ssh_dir.mkdir(parents=True)
        os.chown(ssh_dir, entry.pw_uid, entry.pw_gid)
    os.chmod(ssh_dir, 0o700)  # sshd's StrictModes refuses a looser one
    authorized = ssh_dir / "authorized_keys"
    key_blob = client_public_key.split()[1]
    existing = authorized.read_text() if authorized.exists() else ""
    if not any(key_blob in line.split() for line in existing.splitlines()):
        with authorized.open("a") as out:
            if existing and not existing.endswith("\n"):
                out.write("\n")
            out.write(client_public_key.strip() + "\n")
    os.chown(authorized, entry.pw_uid, entry.pw_gid)
    os.chmod(authorized, 0o600)


def _reauthorize_client_key(layout: SandboxLayout) -> None:
    """On an `up` that finds the sandbox running: put the key back if another tool dropped it."""
    entry = _user_entry(SANDBOX_USER)
    client_pub = layout.client_key.with_name(layout.client_key.name + ".pub")
    if os.geteuid() == 0 and entry is not None and client_pub.exists():
        _authorize_client_key(entry, client_pub.read_text())


def _shadow_password(user: str) -> str:
    try:
        for line in Path("/etc/shadow").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user and len(fields) > 1:
                return fields[1]
    except OSError:
        pass
    return ""


def _make_datasets(entry: pwd.struct_passwd) -> None:
    """The datasets the profiles advertise, as small placeholder directories of aifuser."""
    base = Path(entry.pw_dir) / "datasets"
    for directory in [base] + [base / d.name for s in SANDBOX_SITES for d in s.datasets]:
        if not directory.is_dir():
            directory.mkdir(parents=True)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    for site in SANDBOX_SITES:
        for dataset in site.datasets:
            readme = base / dataset.name / "README"
            if not readme.exists():
                readme.write_text(
                    f"Placeholder for dataset {dataset.name} ({dataset.size} nominal,"
                    f" {dataset.sensitivity}) of the aif sandbox site {site.name}.\n"
                )
                os.chown(readme, entry.pw_uid, entry.pw_gid)


# --- The gateway's files ------------------------------------------------------------


def _write_gateway_files(layout: SandboxLayout) -> None:
    """The site profiles and the user config that make the gateway see the sandbox sites."""
    try:
        # Files in the aif home are the user's alone (0600); only aif reads them.
        for site in SANDBOX_SITES:
            _write_file(layout.profile(site), render_profile_toml(site), 0o600)
        _write_file(layout.user_config, render_user_config_toml(SANDBOX_SITES, layout), 0o600)
    except OSError as err:
        raise SandboxError(f"cannot write the sandbox site profiles and config: {err}") from err
