"""The profile cache: a profile is parsed again whenever its file or aif's reading of it changed,
the cache is private, never creates the home, and never turns into an error."""

from __future__ import annotations

import marshal
import os
import stat
import time
from pathlib import Path

import pytest

from gateway import profile_cache
from gateway import profiles as profiles_module
from gateway.profiles import BrokenProfile, SiteProfile, load_profile, load_profiles

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "profiles"


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The profile files parsed (not taken from the cache), in order."""
    read: list[str] = []
    real = profiles_module.load_profile

    def counting(path: str | Path) -> SiteProfile:
        read.append(Path(path).stem)
        return real(path)

    monkeypatch.setattr(profiles_module, "load_profile", counting)
    return read


@pytest.fixture
def own_site(aif_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$AIF_HOME/profiles/extra.toml: the lumi profile under another name, kept even though
    it was written just now (the tests cannot wait for it to settle)."""
    monkeypatch.setattr(profile_cache, "SETTLED_S", 0.0)
    (aif_home / "profiles").mkdir()
    path = aif_home / "profiles" / "extra.toml"
    path.write_text((SHIPPED / "lumi.toml").read_text().replace('name = "lumi"', 'name = "extra"', 1))
    return path


def test_a_profile_is_parsed_once_then_taken_from_the_cache(aif_home: Path, parsed: list[str]) -> None:
    for name in ("lumi", "it4lia", "meluxina"):  # without and with [[qos]] and [[datasets]]
        first = load_profiles()[name]
        again = load_profiles()[name]
        assert again == first == load_profile(SHIPPED / f"{name}.toml")
        assert repr(again) == repr(first) and again is not first
    assert parsed == ["lumi", "it4lia", "meluxina"]
    cache = aif_home / "cache"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    kept = sorted(cache.iterdir())
    assert [p.name for p in kept] == [
        "profile-it4lia.marshal",
        "profile-lumi.marshal",
        "profile-meluxina.marshal",
    ]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in kept)


def test_every_shipped_profile_comes_back_equal(parsed: list[str]) -> None:
    first = dict(load_profiles())
    again = dict(load_profiles())
    assert again == first and len(parsed) == len(first) == len(list(SHIPPED.glob("*.toml")))


# Each change, and the factory the profile names after it.
CHANGES = {
    "content of the same size": "LUMI AI FACTORY",
    "content of another size": "LUMI AI Factory!",
    "only the modification time": "LUMI AI Factory",
    "replaced by another file": "LUMI AI FACTORY",
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_changed_file_is_parsed_again(own_site: Path, parsed: list[str], change: str) -> None:
    assert load_profiles()["extra"].factory == "LUMI AI Factory"
    assert load_profiles()["extra"].factory == "LUMI AI Factory"
    assert parsed == ["extra"]
    text = own_site.read_text()
    info = own_site.stat()
    changed = text.replace("LUMI AI Factory", CHANGES[change])
    if change == "content of the same size":
        own_site.write_text(changed)
        os.utime(own_site, ns=(info.st_atime_ns, info.st_mtime_ns))  # even with the old time
    elif change == "content of another size":
        own_site.write_text(changed)
    elif change == "only the modification time":
        os.utime(own_site, ns=(info.st_atime_ns, info.st_mtime_ns + 1))
    else:
        replacement = own_site.with_name("new.tmp")
        replacement.write_text(changed)
        os.utime(replacement, ns=(info.st_atime_ns, info.st_mtime_ns))
        os.replace(replacement, own_site)
    profile = load_profiles()["extra"]
    assert parsed == ["extra", "extra"]
    assert profile.factory == CHANGES[change]
    assert profile == load_profile(own_site)


def test_a_file_changed_within_the_last_seconds_is_not_kept(
    own_site: Path, parsed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its modification or change time (which utime cannot set back) is this recent.
    monkeypatch.setattr(profile_cache, "SETTLED_S", time.time() - own_site.stat().st_ctime + 60)
    load_profiles()["extra"]
    load_profiles()["extra"]
    assert parsed == ["extra", "extra"]
    monkeypatch.setattr(profile_cache, "SETTLED_S", 0.0)
    load_profiles()["extra"]
    load_profiles()["extra"]
    assert parsed == ["extra", "extra", "extra"]


def test_a_change_in_what_reads_profiles_parses_them_again(
    parsed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    load_profiles()["lumi"]
    monkeypatch.setattr(profile_cache, "_readers", [("another aif",)])
    load_profiles()["lumi"]
    load_profiles()["lumi"]
    assert parsed == ["lumi", "lumi"]


@pytest.mark.parametrize("damage", [b"", b"not marshal", b"\xe9\x00\x00\x00", "a list"])
def test_a_damaged_cache_is_read_past(aif_home: Path, parsed: list[str], damage: bytes | str) -> None:
    expected = load_profiles()["lumi"]
    kept = aif_home / "cache" / "profile-lumi.marshal"
    if damage == "a list":  # well-formed, but not what this aif wrote
        kept.write_bytes(marshal.dumps([1, 2, 3]))
    else:
        assert isinstance(damage, bytes)
        kept.write_bytes(damage)
    assert load_profiles()["lumi"] == expected
    assert load_profiles()["lumi"] == expected
    assert parsed == ["lumi", "lumi"]  # read again, and kept again


def test_a_broken_profile_is_never_kept(own_site: Path, aif_home: Path, parsed: list[str]) -> None:
    own_site.write_text(own_site.read_text().replace('country = "FI"', 'country = "Finland"'))
    for _ in range(2):
        assert isinstance(load_profiles().broken_one("extra"), BrokenProfile)
    assert parsed == ["extra", "extra"]
    assert not (aif_home / "cache" / "profile-extra.marshal").exists()


def test_no_home_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parsed: list[str]) -> None:
    home = tmp_path / "absent"
    monkeypatch.setenv("AIF_HOME", str(home))
    load_profiles()["lumi"]
    load_profiles()["lumi"]
    assert parsed == ["lumi", "lumi"] and not home.exists()


def test_a_home_that_cannot_hold_the_cache_is_no_error(aif_home: Path, parsed: list[str]) -> None:
    (aif_home / "cache").write_text("a file where the cache directory goes")
    assert load_profiles()["lumi"].name == "lumi"
    assert load_profiles()["lumi"].name == "lumi"
    assert parsed == ["lumi", "lumi"]
