"""Unit tests' stand-in for real sites when the federation probes: every site idle, offline.

``idle_sites`` (a fixture) makes every site a
FakeTransport that answers the federation's probe as an idle cluster built
from the site's own profile, and Slurm's estimate as "now". Nothing reaches
the network.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import pytest

from gateway.profiles import SiteProfile
from gateway.site import SlurmCliBackend
from gateway.transports.base import CommandResult
from gateway.transports.fake import FakeCall, FakeTransport


def idle_probe_output(profile: SiteProfile, script: bytes | None) -> str:
    """What the probe prints at an idle cluster shaped like ``profile``."""
    now = datetime.now().replace(microsecond=0)
    lines = [f"@clock\t{int(now.timestamp())}\t{now.isoformat()}", "@sinfo"]
    for p in profile.partitions:
        nodes = max(1, min(p.max_nodes, 4))
        cpus = p.cpus_per_node * nodes
        gres = f"gpu:{p.gpus_per_node}" if p.gpus_per_node else "(null)"
        used = "gpu:0" if p.gpus_per_node else "(null)"
        memory = p.memory_per_node_mb
        lines.append(f"{p.name}|up|idle|{nodes}|0/{cpus}/0/{cpus}|{gres}|{used}|{memory}|{p.max_walltime}|")
    lines += ["@rc 0", "@queue", "@rc 0", "@config", "@testonly"]
    if script is not None:
        match = re.search(rb"#SBATCH --partition=(\S+)", script)
        partition = match.group(1).decode() if match else profile.partitions[0].name
        start = now.isoformat()
        lines.append(
            f"sbatch: Job 1 to start at {start} using 1 processors on nodes n1 in partition {partition}"
        )
        lines.append("@rc 0")
    else:
        lines.append("@rc -")
    lines.append("@end")
    return "\n".join(lines) + "\n"


@pytest.fixture
def idle_sites(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeTransport]:
    """Every site answers probes as an idle cluster; returns the fake transports by site."""
    from gateway import context

    opened: dict[str, FakeTransport] = {}

    def open_backend(profile: SiteProfile, access: Any, on_command: Any = None, **_: Any) -> SlurmCliBackend:
        if profile.name not in opened:
            fake = FakeTransport(site=profile.name)

            def probe(call: FakeCall, profile: SiteProfile = profile) -> CommandResult:
                with_test = call.argv[-1] == "test"
                return CommandResult(
                    call.argv, 0, idle_probe_output(profile, call.stdin if with_test else None), ""
                )

            fake.respond(["bash", "-c"], handler=probe)
            opened[profile.name] = fake
        return SlurmCliBackend(transport=opened[profile.name], accounting="jobcomp")

    monkeypatch.setattr(context, "open_backend", open_backend)
    return opened
