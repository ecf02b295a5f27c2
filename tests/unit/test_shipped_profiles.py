"""The shipped site profiles: they load, and they encode each site's published rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.errors import ProfileError
from gateway.profile_rules import sector_vocabulary
from gateway.profiles import SiteProfile, load_profile, load_profiles
from gateway.tomlcheck import parse_toml_bytes

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILES_DIR = REPO_ROOT / "profiles"
SITES = ("bsc", "hammerhai", "it4lia", "lumi", "meluxina", "mimer", "pharos")
PROXY_SITES = ("hammerhai", "pharos", "mimer")
PROFILE_FILES = sorted(PROFILES_DIR.glob("*.toml"))


@pytest.fixture(scope="module")
def profiles() -> dict[str, SiteProfile]:
    return {path.stem: load_profile(path) for path in PROFILE_FILES}


# -- every profile -------------------------------------------------------------------


def test_the_seven_sites_are_shipped() -> None:
    assert tuple(sorted(path.stem for path in PROFILE_FILES)) == SITES


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_profile_loads_and_name_matches_file(path: Path) -> None:
    profile = load_profile(path)
    assert profile.name == path.stem
    assert profile.batch_system == "slurm"
    assert profile.partitions
    assert profile.sectors


def test_load_profiles_finds_exactly_the_shipped_ones(aif_home: Path) -> None:
    # aif_home is empty: nothing overrides or adds to the shipped profiles.
    assert tuple(sorted(load_profiles(aif_home))) == SITES


@pytest.mark.parametrize("site", SITES)
def test_every_profile_cites_a_source(profiles: dict[str, SiteProfile], site: str) -> None:
    assert profiles[site].references
    assert all(ref.strip() for ref in profiles[site].references)


@pytest.mark.parametrize("site", SITES)
def test_every_profile_lists_assumptions(profiles: dict[str, SiteProfile], site: str) -> None:
    # None of the AI Factories' new systems is documented yet: every profile uses a proxy.
    assert profiles[site].assumptions


@pytest.mark.parametrize("site", PROXY_SITES)
def test_proxy_sites_say_which_proxy(profiles: dict[str, SiteProfile], site: str) -> None:
    assumptions = profiles[site].assumptions
    assert len(assumptions) >= 3
    assert any("proxy" in a.lower() for a in assumptions)


@pytest.mark.parametrize("site", SITES)
def test_real_sites_use_slurmdbd_and_require_an_account(profiles: dict[str, SiteProfile], site: str) -> None:
    profile = profiles[site]
    assert profile.slurm.accounting == "slurmdbd"
    assert profile.account_required


@pytest.mark.parametrize("site", SITES)
def test_account_example_matches_pattern(profiles: dict[str, SiteProfile], site: str) -> None:
    profile = profiles[site]
    if profile.account_example:
        assert re.fullmatch(profile.account_pattern, profile.account_example)


@pytest.mark.parametrize("site", SITES)
def test_partitions_are_well_formed(profiles: dict[str, SiteProfile], site: str) -> None:
    for partition in profiles[site].partitions:
        if partition.gpus_per_node == 0:
            assert partition.gpu_model == ""
        assert not re.search(r"debug|dbg|dev", partition.name), "debug partitions are never listed"
    for rule in profiles[site].qos_rules:
        partition = next(p for p in profiles[site].partitions if p.name == rule.partition)
        assert rule.max_nodes <= partition.max_nodes
        assert rule.max_walltime_seconds <= partition.max_walltime_seconds


@pytest.mark.parametrize("site", SITES)
def test_qos_required_sites_have_rules_for_every_partition(
    profiles: dict[str, SiteProfile], site: str
) -> None:
    profile = profiles[site]
    if profile.slurm.qos_required:
        for partition in profile.partitions:
            assert partition.qos or any(r.partition == partition.name for r in profile.qos_rules)


def test_sector_vocabulary_is_shared(profiles: dict[str, SiteProfile]) -> None:
    vocabulary = sector_vocabulary(profiles.values())
    assert {"health", "climate", "energy", "language", "finance", "manufacturing"} <= set(vocabulary)
    assert len(vocabulary) <= 30


@pytest.mark.parametrize(
    ("site", "sensitivity"),
    [("mimer", "sensitive"), ("hammerhai", "sensitive"), ("lumi", "internal"), ("bsc", "internal")],
)
def test_max_sensitivity(profiles: dict[str, SiteProfile], site: str, sensitivity: str) -> None:
    assert profiles[site].max_sensitivity == sensitivity


# -- per-site rules (gotchas in shared/sites/eurohpc-systems.md) ---------------------


def test_lumi(profiles: dict[str, SiteProfile]) -> None:
    lumi = profiles["lumi"]
    assert (lumi.host, lumi.port, lumi.auth) == ("lumi.csc.fi", 22, "ssh-key")
    assert lumi.account_pattern == "project_[0-9]{9}"
    assert re.fullmatch(lumi.account_pattern, "project_465000123")
    assert not re.fullmatch(lumi.account_pattern, "project_46500012")
    assert lumi.slurm.gpu_request == "gpus-per-node"
    assert lumi.slurm.send_memory
    assert lumi.slurm.shebang == "#!/bin/bash -l"
    assert [p.name for p in lumi.partitions] == ["small-g", "standard-g", "small", "standard"]
    gpu_partitions = [p for p in lumi.partitions if p.gpus_per_node]
    # LUMI-G: 56 usable cores; a job asking 64 cores per node never runs.
    assert all(p.cpus_per_node <= 56 for p in gpu_partitions)
    assert all(p.gpus_per_node == 8 and p.gpu_model == "mi250x" for p in gpu_partitions)
    by_name = {p.name: p for p in lumi.partitions}
    assert by_name["standard-g"].whole_node and not by_name["small-g"].whole_node
    assert by_name["small-g"].max_nodes == 4 and by_name["standard-g"].max_nodes == 1024
    assert lumi.slurm.cpus_per_gpu * 8 <= 56


def test_it4lia(profiles: dict[str, SiteProfile]) -> None:
    it4lia = profiles["it4lia"]
    assert it4lia.host == "login.leonardo.cineca.it"
    assert it4lia.auth == "ssh-certificate"
    assert re.fullmatch(it4lia.account_pattern, "AIFAC_F02_378")
    assert it4lia.slurm.gpu_request == "gres"
    assert it4lia.slurm.qos_required
    gpu_partitions = [p for p in it4lia.partitions if p.gpus_per_node]
    assert [p.name for p in gpu_partitions] == ["boost_usr_prod"]
    booster = gpu_partitions[0]
    assert (booster.gpus_per_node, booster.cpus_per_node, booster.memory_per_node) == (4, 32, "494000M")
    rules = [
        (r.name, r.min_nodes, r.max_nodes, r.max_walltime)
        for r in it4lia.qos_rules
        if r.partition == "boost_usr_prod"
    ]
    assert [r[0] for r in rules] == ["boost_qos_dbg", "normal", "boost_qos_lprod", "boost_qos_bprod"]
    assert rules[0][2:] == (2, "00:30:00")
    assert rules[1][2:] == (64, "1-00:00:00")
    assert rules[2][2:] == (3, "4-00:00:00")
    assert rules[3][1] == 65 and rules[3][3] == "1-00:00:00"


def test_bsc(profiles: dict[str, SiteProfile]) -> None:
    bsc = profiles["bsc"]
    assert bsc.host == "alogin1.bsc.es"
    assert re.fullmatch(bsc.account_pattern, "ehpc536")
    assert bsc.slurm.send_memory is False
    assert bsc.slurm.cpus_per_gpu == 20 and bsc.slurm.enforce_cpus_per_gpu
    assert bsc.slurm.qos_required
    acc = next(p for p in bsc.partitions if p.gpus_per_node)
    assert (acc.gpus_per_node, acc.cpus_per_node) == (4, 80)
    acc_rules = [r.name for r in bsc.qos_rules if r.partition == acc.name]
    assert acc_rules[0] == "acc_ehpc"
    assert "acc_debug" not in acc_rules
    assert bsc.environment.container_setup == ("module load singularity",)


def test_meluxina(profiles: dict[str, SiteProfile]) -> None:
    meluxina = profiles["meluxina"]
    assert (meluxina.host, meluxina.port) == ("login.lxp.lu", 8822)
    assert meluxina.slurm.qos_required
    assert re.fullmatch(meluxina.account_pattern, "p200981")
    for partition in ("gpu", "cpu"):
        names = [r.name for r in meluxina.qos_rules if r.partition == partition]
        assert names == ["short", "default", "long"]


def test_hammerhai_says_slurm_is_an_assumption(profiles: dict[str, SiteProfile]) -> None:
    text = " ".join(profiles["hammerhai"].assumptions)
    assert "PBS" in text and "pbspro" in text


def test_mimer(profiles: dict[str, SiteProfile]) -> None:
    mimer = profiles["mimer"]
    assert mimer.auth == "password+otp"
    assert re.fullmatch(mimer.account_pattern, "berzelius-2025-123")
    assert mimer.slurm.gpu_request == "gpus-per-node"


# -- the operators' guide ---------------------------------------------------------------


def _readme_template() -> str:
    text = (PROFILES_DIR / "README.md").read_text(encoding="utf-8")
    blocks: list[str] = re.findall(r"^```toml\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) == 1, "README.md must hold exactly one ```toml block: the template"
    return blocks[0]


def test_readme_template_is_a_valid_profile(tmp_path: Path) -> None:
    template = _readme_template()
    site = parse_toml_bytes(template.encode(), "README.md template", ProfileError)["site"]
    assert isinstance(site, dict)
    name = site["name"]
    path = tmp_path / f"{name}.toml"
    path.write_text(template, encoding="utf-8")
    profile = load_profile(path)
    assert profile.name == name
    assert profile.partitions and profile.references


def test_readme_documents_every_key() -> None:
    from gateway import profiles as module

    text = (PROFILES_DIR / "README.md").read_text(encoding="utf-8")
    keys = {
        *module.SLURM_KEYS,
        *module.PARTITION_KEYS,
        *module.QOS_KEYS,
        *module.DATASET_KEYS,
        "schema_version",
        "factory",
        "system",
        "country",
        "operator",
        "sectors",
        "max_sensitivity",
        "batch_system",
        "host",
        "port",
        "auth",
        "notes",
        "required",
        "pattern",
        "example",
        "setup",
        "module_command",
        "container_setup",
        "container_exec",
        "references",
        "assumptions",
    }
    missing = sorted(key for key in keys if f"| `{key}` |" not in text)
    assert not missing


def test_a_profile_with_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from gateway.cli import main

    path = tmp_path / "lumi.toml"
    path.write_bytes(b"\xef\xbb\xbf" + (PROFILES_DIR / "lumi.toml").read_bytes())
    assert load_profile(path).name == "lumi"
    result = CliRunner().invoke(main, ["profile", "validate", str(path)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("site", "old", "new", "key"),
    [
        ("lumi", 'work_area = "', 'work_area = "/' + "w" * 1024, "slurm.work_area"),
        ("it4lia", '\npath = "', '\npath = "/' + "d" * 1024, "datasets[0].path"),
    ],
)
def test_profile_paths_are_bounded(tmp_path: Path, site: str, old: str, new: str, key: str) -> None:
    text = (PROFILES_DIR / f"{site}.toml").read_text()
    assert old in text
    path = tmp_path / f"{site}.toml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ProfileError, match=rf"{re.escape(key)}: .* characters long; at most 1024 allowed"):
        load_profile(path)
