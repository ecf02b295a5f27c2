"""One bad profile must not break every site: the good ones stay usable, the broken ones are
listed with their error, and only using a broken site by name fails (with that error, exit 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gateway import profiles as profiles_module
from gateway.cli import main
from gateway.errors import ProfileError
from gateway.profiles import BrokenProfile, get_profile, known_site_names, load_profiles, profile_files

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "profiles"
SPEC = REPO / "tests" / "data" / "specs" / "gpu-example.toml"


def aif(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.fixture
def user_profiles(aif_home: Path) -> Path:
    """$AIF_HOME/profiles with one good extra site, one file that is not TOML, one with a bad value."""
    directory = aif_home / "profiles"
    directory.mkdir()
    lumi = (SHIPPED / "lumi.toml").read_text()
    (directory / "extra.toml").write_text(lumi.replace('name = "lumi"', 'name = "extra"', 1))
    (directory / "notoml.toml").write_text("[site\nname = 'notoml'\n")
    (directory / "badvalue.toml").write_text(
        lumi.replace('name = "lumi"', 'name = "badvalue"', 1).replace(
            'country = "FI"', 'country = "Finland"', 1
        )
    )
    return directory


def test_load_profiles_keeps_the_good_and_reports_the_broken(user_profiles: Path) -> None:
    profiles = load_profiles()
    assert {"lumi", "bsc", "extra"} <= set(profiles)
    assert "notoml" not in profiles and "badvalue" not in profiles
    assert sorted(profiles.broken) == ["badvalue", "notoml"]
    notoml = profiles.broken["notoml"]
    assert notoml == BrokenProfile(
        name="notoml", path=str(user_profiles / "notoml.toml"), message=notoml.message
    )
    assert notoml.message.startswith(f"{user_profiles / 'notoml.toml'}: not valid TOML")
    assert "site.country: 'Finland' is not allowed" in profiles.broken["badvalue"].message
    assert all("\n" not in b.message for b in profiles.broken.values())


def test_using_a_broken_site_by_name_gives_its_error(user_profiles: Path) -> None:
    profiles = load_profiles()
    with pytest.raises(ProfileError) as info:
        get_profile(profiles, "badvalue")
    assert info.value.message == profiles.broken["badvalue"].message
    result = aif("render", str(SPEC), "--site", "notoml")
    assert result.exit_code == 3
    assert result.stderr == f"aif: error: {profiles.broken['notoml'].message}\n"
    submitted = aif("submit", str(SPEC), "--site", "badvalue")
    assert submitted.exit_code == 3 and "site.country: 'Finland'" in submitted.stderr


def test_every_other_site_still_works(user_profiles: Path, aif_home: Path, idle_sites: object) -> None:
    (aif_home / "config.toml").write_text('[sites.meluxina]\naccount = "p200981"\n')
    rendered = aif("render", str(SPEC), "--site", "lumi", "--account", "project_465000123")
    assert rendered.exit_code == 0, rendered.output
    dry = aif("submit", str(SPEC), "--site", "meluxina", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    placed = aif("submit", str(SPEC), "--dry-run", "--json")
    assert placed.exit_code == 0, placed.output
    assert json.loads(placed.stdout)[0]["site"] == "meluxina"


def test_sites_lists_broken_profiles_as_unusable(user_profiles: Path) -> None:
    result = aif("sites", "--json")
    assert result.exit_code == 0, result.output
    sites = {s["name"]: s for s in json.loads(result.stdout)}
    assert sites["lumi"]["factory"] and sites["extra"]["factory"]
    for name in ("notoml", "badvalue"):
        assert sites[name]["usable"] is False
        assert str(user_profiles / f"{name}.toml") in sites[name]["problem"]
        assert sites[name]["problem"].startswith(f"site {name} is not usable: ")
    table = aif("sites")
    assert table.exit_code == 0
    row = next(line for line in table.stdout.splitlines() if "notoml" in line and "no (see below)" in line)
    assert row
    assert f"site notoml is not usable: {user_profiles / 'notoml.toml'}: not valid TOML" in table.stdout


def test_a_broken_override_of_a_shipped_profile_is_not_replaced_silently(aif_home: Path) -> None:
    (aif_home / "profiles").mkdir()
    (aif_home / "profiles" / "lumi.toml").write_text("schema_version = 1\n")
    profiles = load_profiles()
    assert "lumi" not in profiles and "lumi" in profiles.broken
    assert "site: is required" in profiles.broken["lumi"].message


@pytest.fixture
def files_read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The sites whose profile files are read (parsed, or taken from the profile cache), in order."""
    read: list[str] = []
    real = profiles_module._read_profile

    def counting(name: str, path: str) -> profiles_module.SiteProfile | BrokenProfile:
        read.append(name)
        return real(name, path)

    monkeypatch.setattr(profiles_module, "_read_profile", counting)
    return read


def test_a_site_asked_for_by_name_reads_its_own_file_alone(
    user_profiles: Path, files_read: list[str]
) -> None:
    profiles = load_profiles()
    assert known_site_names(profiles) == sorted(profile_files()) and files_read == []
    assert get_profile(profiles, "lumi").name == "lumi" and "extra" in profiles
    with pytest.raises(ProfileError):
        get_profile(profiles, "notoml")
    assert files_read == ["lumi", "extra", "notoml"]
    # Going through the set reads the others, each file once, and sees what reading all at once sees.
    assert sorted(profiles.broken) == ["badvalue", "notoml"]
    assert sorted(files_read) == sorted(profile_files())
    fresh = load_profiles()
    assert list(fresh.usable) == list(profiles.usable) and fresh.broken == profiles.broken
    assert list(profiles) == list(fresh.usable) == [n for n in profile_files() if n in fresh.usable]


def test_render_for_one_site_reads_that_profile_only(
    user_profiles: Path, files_read: list[str], tmp_path: Path
) -> None:
    spec = tmp_path / "hello.toml"
    spec.write_text('[job]\nname = "hello"\ncommand = ["hostname"]\n')
    rendered = aif("render", str(spec), "--site", "lumi", "--account", "project_465000123")
    assert rendered.exit_code == 0, rendered.output
    assert files_read == ["lumi"]
    # A spec that names a sector is checked against every site's sectors: all are read.
    spec.write_text('[job]\nname = "hello"\ncommand = ["hostname"]\nsector = "health"\n')
    files_read.clear()
    assert aif("render", str(spec), "--site", "lumi", "--account", "project_465000123").exit_code == 0
    assert sorted(files_read) == sorted(profile_files())


def test_profile_validate_stays_strict(user_profiles: Path) -> None:
    result = aif("profile", "validate", str(user_profiles / "extra.toml"), str(user_profiles / "notoml.toml"))
    assert result.exit_code == 3
    assert "extra.toml: ok" in result.stdout and "not valid TOML" in result.stderr


# -- [sites.<typo>] in the user's config -------------------------------------------------------


@pytest.fixture
def config_with_a_typo(aif_home: Path) -> Path:
    config = aif_home / "config.toml"
    config.write_text(
        '[sites.lumii]\naccount = "project_465000123"\n\n[sites.meluxina]\naccount = "p200981"\n'
    )
    return config


def test_sites_shows_a_config_entry_for_no_known_site(config_with_a_typo: Path) -> None:
    result = aif("sites", "--json")
    assert result.exit_code == 0, result.output
    sites = {s["name"]: s for s in json.loads(result.stdout)}
    assert sites["meluxina"]["usable"] is True
    stray = sites["lumii"]
    assert stray["usable"] is False
    assert stray["problem"].startswith(f"{config_with_a_typo}: sites.lumii: 'lumii' is not a known site; ")
    assert "did you mean 'lumi'?" in stray["problem"] and "this entry is not used" in stray["problem"]
    # The site it was meant for says why it still lacks an account.
    assert "sites.lumii: 'lumii' is not a known site; did you mean 'lumi'?" in sites["lumi"]["problem"]
    table = aif("sites")
    assert table.exit_code == 0 and "'lumii' is not a known site" in table.stdout


def test_a_config_typo_is_named_where_the_site_is_used(config_with_a_typo: Path) -> None:
    # render: the config is invalid for lumi (3); submit: lumi cannot take the job (4), as before.
    for args, code in (
        (("render", str(SPEC), "--site", "lumi"), 3),
        (("submit", str(SPEC), "--site", "lumi"), 4),
    ):
        result = aif(*args)
        assert result.exit_code == code, result.output
        assert result.stderr.count("\n") == 1
        assert "site lumi is not usable: it needs an account" in result.stderr
        assert "sites.lumii: 'lumii' is not a known site; did you mean 'lumi'?" in result.stderr


def test_a_config_typo_does_not_break_other_sites(config_with_a_typo: Path, idle_sites: object) -> None:
    assert aif("render", str(SPEC), "--site", "meluxina").exit_code == 0
    dry = aif("submit", str(SPEC), "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)[0]["site"] == "meluxina"
