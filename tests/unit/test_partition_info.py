"""gateway.slurm.partitions and profile_compare on real Slurm 22.05 output (tests/data/slurm/README.md)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.profiles import SiteProfile, load_profile
from gateway.slurm import SlurmOutputError
from gateway.slurm import partitions as partition_info
from gateway.slurm.partitions import (
    GresItem,
    parse_check_output,
    parse_gres,
    parse_scontrol_partitions,
    parse_sinfo_nodes,
    read_test_only,
)
from gateway.slurm.profile_compare import Comparison, compare_profile

TESTS = Path(__file__).resolve().parents[1]
DATA = TESTS / "data" / "slurm"
GOLDEN = TESTS / "golden" / "sandbox"


def recorded(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def sandbox_profile(name: str) -> SiteProfile:
    """The profile `aif sandbox up` writes (its golden file), as the recordings' sites had it."""
    return load_profile(GOLDEN / f"{name}.toml")


# --- sinfo ------------------------------------------------------------------------------------


def test_sinfo_lists_each_node_once_per_partition() -> None:
    nodes = parse_sinfo_nodes(recorded("sinfo-nodes-north.stdout"))
    assert [(n.partition, n.name) for n in nodes] == [
        ("standard", "north-n1"),
        ("gpu", "north-n1"),
        ("standard", "north-n2"),
        ("gpu", "north-n2"),
    ]
    node = nodes[0]
    assert (node.cpus, node.memory_mb, node.gpus, node.gpu_types, node.state) == (64, 256000, 4, (), "idle")
    assert node.gres == (GresItem("gpu", "", 4),)
    assert node.available


def test_sinfo_of_a_cpu_cluster_has_no_gres() -> None:
    nodes = parse_sinfo_nodes(recorded("sinfo-nodes-east.stdout"))
    assert {(n.name, n.gres, n.gpus, n.gres_text) for n in nodes} == {
        ("east-n1", (), 0, "none"),
        ("east-n2", (), 0, "none"),
    }


def test_sinfo_of_typed_gres_and_nodes_that_cannot_run_jobs() -> None:
    nodes = {(n.partition, n.name): n for n in parse_sinfo_nodes(recorded("sinfo-nodes-edge.stdout"))}
    assert nodes["gpu-mixed", "rec-n1"].gres == (GresItem("gpu", "a100", 4),)
    drained = nodes["gpu-mixed", "rec-n2"]
    assert (drained.gpu_types, drained.gpus, drained.state, drained.available) == (
        ("h100",),
        2,
        "drained",
        False,
    )
    busy = nodes["cpu", "rec-n3"]
    assert (busy.cpus, busy.memory_mb, busy.state, busy.available) == (128, 256000, "mixed", True)
    # --all: hidden partitions are listed too
    assert ("hidden", "rec-n2") in nodes


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ("(null)", ()),
        ("gpu", (GresItem("gpu", "", 1),)),
        ("gpu:8", (GresItem("gpu", "", 8),)),
        ("gpu:a100:4(S:0-1)", (GresItem("gpu", "a100", 4),)),
        ("gpu:a100:2(S:0,2),gpu:v100:2(S:1)", (GresItem("gpu", "a100", 2), GresItem("gpu", "v100", 2))),
        (
            "gpu:nvidia_a100-sxm4-80gb:4,shard:16",
            (GresItem("gpu", "nvidia_a100-sxm4-80gb", 4), GresItem("shard", "", 16)),
        ),
        ("gpu:mi250", (GresItem("gpu", "mi250", 1),)),
    ],
)
def test_gres_forms(text: str, items: tuple[GresItem, ...]) -> None:
    assert parse_gres(text) == items


@pytest.mark.parametrize(
    "line", ["standard|north-n1|64|256000|gpu:4", "standard|north-n1|many|256000|gpu:4|idle"]
)
def test_sinfo_lines_not_in_aifs_format_are_refused(line: str) -> None:
    with pytest.raises(SlurmOutputError):
        parse_sinfo_nodes(line + "\n")


@pytest.mark.parametrize(
    ("state", "available"),
    [("idle", True), ("mixed", True), ("allocated", True), ("idle~", True), ("idle*", False),
     ("down*", False), ("drained", False), ("draining", False), ("inval", False)],
)  # fmt: skip
def test_node_states(state: str, available: bool) -> None:
    [node] = parse_sinfo_nodes(f"p|n1|1|1|(null)|{state}\n")
    assert node.available is available


# --- scontrol show partition -o -----------------------------------------------------------------


def test_scontrol_partitions_of_the_sandbox() -> None:
    standard, gpu = parse_scontrol_partitions(recorded("scontrol-partitions-north.stdout"))
    assert (standard.name, standard.default, standard.state, standard.nodes) == (
        "standard",
        True,
        "UP",
        "north-n[1-2]",
    )
    assert (standard.max_time, standard.max_time_seconds, gpu.max_time_seconds) == (
        "2-00:00:00",
        172800,
        86400,
    )
    assert (gpu.default, gpu.total_nodes, gpu.max_nodes, gpu.max_cpus_per_node) == (False, 2, None, None)
    assert (gpu.max_mem_per_node_mb, gpu.max_mem_per_cpu_mb, gpu.allow_qos, gpu.deny_qos) == (
        None,
        None,
        None,
        (),
    )
    assert gpu.fields["TRES"] == "cpu=128,mem=500G,node=2,billing=128"


def test_scontrol_partitions_with_limits() -> None:
    parts = {p.name: p for p in parse_scontrol_partitions(recorded("scontrol-partitions-edge.stdout"))}
    assert list(parts) == ["cpu", "a100", "gpu-mixed", "hidden", "closed", "inactive", "empty"]
    cpu = parts["cpu"]
    assert (cpu.max_nodes, cpu.max_cpus_per_node, cpu.max_mem_per_node_mb) == (1, 120, 240000)
    assert (parts["a100"].allow_qos, parts["a100"].oversubscribe) == (("normal", "gpu"), "EXCLUSIVE")
    assert parts["gpu-mixed"].max_mem_per_cpu_mb == 4000
    assert (parts["hidden"].hidden, parts["hidden"].max_time, parts["hidden"].max_time_seconds) == (
        True,
        "UNLIMITED",
        None,
    )
    assert (parts["closed"].state, parts["closed"].max_time_seconds) == ("DOWN", 1800)
    assert parts["inactive"].state == "INACTIVE"
    assert (parts["empty"].nodes, parts["empty"].total_nodes) == ("", 0)


def test_scontrol_lines_without_the_essential_fields_are_refused() -> None:
    with pytest.raises(SlurmOutputError, match="lacks"):
        parse_scontrol_partitions("PartitionName=x State=UP\n")
    with pytest.raises(SlurmOutputError, match="unreadable"):
        parse_scontrol_partitions("PartitionName=x State=UP MaxTime=1 MaxNodes=many TotalNodes=1\n")


# --- the whole command and sbatch --test-only ---------------------------------------------------


def test_the_check_output_of_the_sandbox() -> None:
    snapshot = parse_check_output(recorded("profile-check-north.stdout"), 2)
    assert [p.name for p in snapshot.partitions] == ["standard", "gpu"]
    assert len(snapshot.nodes) == 4
    assert [rc for rc, _ in snapshot.test_only] == [0, 0]
    standard = read_test_only("standard", *snapshot.test_only[0])
    assert standard.ok
    assert standard.start == "2026-11-29T08:08:30"
    assert standard.message.startswith("sbatch: Job 9 to start at 2026-11-29T08:08:30 using 1 processors")


def test_test_only_refusals_keep_slurms_words() -> None:
    snapshot = parse_check_output(recorded("profile-check-north-wrong.stdout"), 2)
    refused = read_test_only("standrd", *snapshot.test_only[0])
    assert not refused.ok
    assert refused.start == ""
    assert refused.message == (
        "sbatch: error: invalid partition specified: standrd / "
        "allocation failure: Invalid partition name specified"
    )
    edge = parse_check_output(recorded("profile-check-edge.stdout"), 6)
    answers = [read_test_only(str(i), rc, text) for i, (rc, text) in enumerate(edge.test_only)]
    assert [a.ok for a in answers] == [True, True, False, True, False, False]
    assert answers[0].start == "2026-11-29T10:08:36"  # later: a running job holds the node's memory
    assert answers[2].message == "allocation failure: Requested node configuration is not available"
    assert answers[4].message == "allocation failure: Required partition not available (inactive or drain)"


def test_check_output_that_is_cut_short_is_refused() -> None:
    text = recorded("profile-check-north.stdout")
    with pytest.raises(SlurmOutputError, match="answered 2 of 3"):
        parse_check_output(text, 3)
    cut = text[: text.rindex(partition_info.SECTION)]
    with pytest.raises(SlurmOutputError, match="cut short"):
        parse_check_output(cut, 2)
    with pytest.raises(SlurmOutputError, match="no partitions"):
        parse_check_output(recorded("sinfo-nodes-north.stdout"), 0)


FAKE_SBATCH = """#!/bin/bash
[ "$*" = "--test-only" ] || { echo "fake sbatch: unexpected arguments: $*" >&2; exit 99; }
n=$(ls "$CALLS" | wc -l)
cat > "$CALLS/$n"
if grep -q -- '--partition=nosuch' "$CALLS/$n"; then
    echo "sbatch: error: invalid partition specified: nosuch" >&2
    echo "allocation failure: Invalid partition name specified" >&2
    exit 1
fi
echo "sbatch: Job $((n + 7)) to start at 2026-11-29T08:08:30 using 1 processors on nodes n1 in partition p" \
    >&2
"""


@pytest.fixture
def fake_slurm(tmp_path: Path) -> dict[str, str]:
    """sinfo and scontrol replaying the sandbox's recordings, and an sbatch keeping what it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "calls").mkdir()
    for name, recording in (
        ("sinfo", "sinfo-nodes-north.stdout"),
        ("scontrol", "scontrol-partitions-north.stdout"),
    ):
        (bin_dir / name).write_text(f'#!/bin/bash\ncat "{DATA / recording}"\n')
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    for program in bin_dir.iterdir():
        program.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls")}


def test_the_check_program_sends_each_script_verbatim_and_frames_each_answer(
    fake_slurm: dict[str, str], tmp_path: Path
) -> None:
    scripts = [
        "#!/bin/bash\n#SBATCH --partition=standard\ntrue\n",
        # no final newline
        "#!/bin/bash\n#SBATCH --partition=nosuch\necho \"$(touch pwned)\" '\\'; `touch pwned2`",
    ]
    result = subprocess.run(
        partition_info.check_argv(scripts), capture_output=True, text=True, env=fake_slurm, cwd=tmp_path
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert [(tmp_path / "calls" / str(i)).read_text() for i in range(2)] == scripts
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
    snapshot = parse_check_output(result.stdout, 2)
    assert snapshot.nodes == parse_sinfo_nodes(recorded("sinfo-nodes-north.stdout"))
    assert snapshot.partitions == parse_scontrol_partitions(recorded("scontrol-partitions-north.stdout"))
    first, second = (read_test_only("p", rc, text) for rc, text in snapshot.test_only)
    assert (first.ok, first.start) == (True, "2026-11-29T08:08:30")
    assert (second.ok, second.message) == (
        False,
        "sbatch: error: invalid partition specified: nosuch / "
        "allocation failure: Invalid partition name specified",
    )


def test_the_check_program_stops_when_the_controller_cannot_be_asked(
    fake_slurm: dict[str, str], tmp_path: Path
) -> None:
    down = recorded("profile-check-ctld-down.stderr")
    sinfo = Path(fake_slurm["PATH"].split(":")[0]) / "sinfo"
    sinfo.write_text(f"#!/bin/bash\nprintf '%s' '{down}' >&2\nexit 1\n")
    result = subprocess.run(
        partition_info.check_argv(["#!/bin/bash\ntrue\n"]), capture_output=True, text=True, env=fake_slurm
    )
    assert (result.returncode, result.stdout, result.stderr) == (1, "", down)
    assert not list((tmp_path / "calls").iterdir())  # no test job was sent


# --- the comparison ------------------------------------------------------------------------------


def check(profile: SiteProfile, recording: str) -> Comparison:
    return compare_profile(profile, parse_check_output(recorded(recording), len(profile.partitions)))


@pytest.mark.parametrize(
    ("site", "recording"), [("north", "profile-check-north.stdout"), ("east", "profile-check-east.stdout")]
)
def test_the_sandbox_profiles_agree_with_their_sites(site: str, recording: str) -> None:
    comparison = check(sandbox_profile(f"sandbox-{site}"), recording)
    assert comparison.mismatches == ()
    if site == "east":
        assert comparison.notes == ()
    else:
        assert comparison.notes == (
            "partitions[0].gpus_per_node: the profile lists standard without GPUs, its nodes have gpu:4 "
            "(sinfo GRES): aif sends only CPU jobs there",
            "partitions[1].gpu_model: the site's GRES in gpu names no GPU type (gpu:4), "
            "so 'fake' cannot be checked",
        )


def test_a_wrong_profile_gets_one_mismatch_per_wrong_key() -> None:
    profile = sandbox_profile("sandbox-north")
    standard, gpu = profile.partitions
    wrong = replace(
        profile,
        partitions=(
            replace(standard, name="standrd"),
            replace(
                gpu,
                cpus_per_node=96,
                memory_per_node="300G",
                memory_per_node_mb=307200,
                gpus_per_node=8,
                max_walltime="2-00:00:00",
                max_walltime_seconds=172800,
            ),
        ),
    )
    comparison = check(wrong, "profile-check-north.stdout")
    assert [m.line() for m in comparison.mismatches] == [
        "partitions[0].name: profile says standrd, the site has no such partition (it has standard, gpu) "
        "(scontrol PartitionName): every job placed there is rejected; did you mean standard?",
        "partitions[1].cpus_per_node: profile says 96, the site has 64 (sinfo CPUS): "
        "jobs asking that many cores per node are rejected",
        "partitions[1].memory_per_node: profile says 300G (307200 MB), the site has 256000 MB "
        "(sinfo MEMORY): jobs asking that much memory per node are rejected",
        "partitions[1].gpus_per_node: profile says 8, the site has 4 (gpu:4) (sinfo GRES): "
        "jobs asking that many GPUs per node are rejected",
        "partitions[1].max_walltime: profile says 2-00:00:00, the site has 1-00:00:00 (scontrol MaxTime): "
        "longer jobs are accepted but never start (PartitionTimeLimit)",
    ]
    assert comparison.mismatches[1].to_json() == {
        "key": "partitions[1].cpus_per_node",
        "profile": "96",
        "site": "64",
        "source": "sinfo CPUS",
        "why": "jobs asking that many cores per node are rejected",
    }
    assert comparison.notes[-1] == (
        "the site's partition standard is not in the profile: the default, 2 nodes, 64 CPUs, 256000 MB, "
        "GRES gpu:4, MaxTime 2-00:00:00"
    )


def test_fewer_gpus_than_the_site_has_is_a_mismatch_fewer_cores_a_note() -> None:
    profile = sandbox_profile("sandbox-north")
    standard, gpu = profile.partitions
    modest = replace(profile, partitions=(replace(standard, cpus_per_node=56), replace(gpu, gpus_per_node=2)))
    comparison = check(modest, "profile-check-north.stdout")
    assert [(m.key, m.site, m.why) for m in comparison.mismatches] == [
        ("partitions[1].gpus_per_node", "4 (gpu:4)", "jobs that could use more GPUs are placed elsewhere")
    ]
    assert (
        "partitions[0].cpus_per_node: the profile says 56, the site's nodes have 64 (sinfo CPUS): "
        "fine if deliberate" in comparison.notes
    )


def test_typed_requests_need_a_typed_gres() -> None:
    profile = sandbox_profile("sandbox-north")
    typed = replace(profile, slurm=replace(profile.slurm, gpu_request="gres-typed"))
    [mismatch] = check(typed, "profile-check-north.stdout").mismatches
    assert mismatch.line() == (
        "slurm.gpu_request: profile says gres-typed, the site has GPUs of no named type in gpu (gpu:4) "
        "(sinfo GRES): typed GPU requests (fake:N) cannot be met there"
    )


def test_every_limit_of_a_partition_is_compared() -> None:
    comparison = check(load_profile(TESTS / "data" / "profiles" / "record.toml"), "profile-check-edge.stdout")
    assert [m.line() for m in comparison.mismatches] == [
        "partitions[0].cpus_per_node: profile says 128, the site has 120 (scontrol MaxCPUsPerNode): "
        "jobs asking that many cores per node are rejected",
        "partitions[0].max_nodes: profile says 2, the site has 1 (scontrol MaxNodes): "
        "larger jobs are rejected",
        "qos[0].name: profile says bad, the site has only QOS normal, gpu allowed in a100 "
        "(scontrol AllowQos): its jobs are rejected",
        "partitions[2].memory_per_node: profile says 300G (307200 MB), the site has 192000 MB to 256000 MB "
        "(nodes differ) (scontrol MaxMemPerCPU x CPUs): jobs asking that much memory per node are rejected",
        "partitions[5].name: profile says empty, the site has a partition without nodes (scontrol Nodes): "
        "no job can run there",
    ]
    assert comparison.notes == (
        "partitions[0].memory_per_node: the profile says 200G (204800 MB), the site's nodes have 240000 MB "
        "(scontrol MaxMemPerNode): fine if deliberate",
        "partitions[0].max_walltime: the profile says 1-00:00:00, the site allows 2-00:00:00 "
        "(scontrol MaxTime)",
        "partitions[1].whole_node: the site gives whole nodes in a100 (scontrol OverSubscribe=EXCLUSIVE); "
        "whole_node = true would say so",
        "partitions[2] (gpu-mixed): 1 of 2 nodes cannot run jobs now (rec-n2 drained)",
        "partitions[2].cpus_per_node: 64 fits only some of the site's nodes, which have 48 to 64 "
        "(nodes differ) (sinfo CPUS)",
        "partitions[2].gpus_per_node: 4 GPUs fit only some nodes, which have 2 to 4 (nodes differ) "
        "(sinfo GRES)",
        "partitions[2].gpu_model: gpu-mixed mixes GPU types a100 and h100 (sinfo GRES)",
        "partitions[3] (closed) is DOWN at the site (scontrol State): its jobs do not start now",
        "partitions[3].memory_per_node: the profile says 200G (204800 MB), the site's nodes have 256000 MB "
        "(sinfo MEMORY): fine if deliberate",
        "partitions[4] (inactive) is INACTIVE at the site (scontrol State): its jobs do not start now",
        "partitions[4].memory_per_node: the profile says 200G (204800 MB), the site's nodes have 256000 MB "
        "(sinfo MEMORY): fine if deliberate",
        "the site's partition hidden is not in the profile: hidden, 3 nodes, 48-128 CPUs, 256000-512000 MB, "
        "GRES gpu:a100:4 / gpu:h100:2, MaxTime UNLIMITED",
    )


def test_a_gpu_model_the_site_does_not_have() -> None:
    profile = load_profile(TESTS / "data" / "profiles" / "record.toml")
    a100 = replace(profile.partitions[1], gpu_model="v100")
    comparison = check(replace(profile, partitions=(*profile.partitions[:1], a100, *profile.partitions[2:])),
                       "profile-check-edge.stdout")  # fmt: skip
    [model] = [m for m in comparison.mismatches if m.key.endswith("gpu_model")]
    assert model.line() == (
        "partitions[1].gpu_model: profile says 'v100', the site has GPU type a100 (sinfo GRES): "
        "typed requests fail, and specs asking for the real model never go there"
    )
