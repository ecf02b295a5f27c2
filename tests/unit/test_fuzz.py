"""Fuzzing: random and mutated spec, profile and config documents, through the loaders and the CLI.

Whatever the document, the only outcomes are success or a clean InvalidInput
(exit 3, one printable line naming the file): never a traceback, never
another exception type. ``make test`` runs a quick pass; ``make fuzz`` runs
``AIF_FUZZ_EXAMPLES`` (10000) examples per test. Bugs found are pinned in
test_fuzz_regressions below.
"""

from __future__ import annotations

import json
import re
import traceback
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st

from gateway.cli import main
from gateway.config import load_config
from gateway.errors import ConfigError, InvalidInput, ProfileError, SpecError
from gateway.profile_rules import check_config_sites, stray_config_entries
from gateway.profiles import load_profile, load_profiles
from gateway.spec import load_spec
from tests.unit.fuzzing import (
    CONFIG_FILES,
    FUZZ,
    PROFILE_FILES,
    REPO,
    SPEC_FILES,
    documents,
    tomllib,
    write_document,
)

pytestmark = pytest.mark.fuzz

SHIPPED_SITES = sorted(p.stem for p in (REPO / "profiles").glob("*.toml"))


def clean_message(message: str, path: Path) -> None:
    assert message.isprintable(), message
    assert message.startswith(f"{path}: "), message


def clean_exit(result: Result, allowed: set[int]) -> None:
    """No exception but SystemExit, an allowed code, and a failure is one `aif: error:` line."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError("".join(traceback.format_exception(*result.exc_info)))  # type: ignore[misc]
    assert result.exit_code in allowed, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    if result.exit_code:
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("aif: error: ")
        assert result.stderr[:-1].isprintable()


def profile_file_name(document: str | bytes) -> str:
    """The file name a profile needs (its site.name), when the document still has one."""
    try:
        text = document.decode("utf-8") if isinstance(document, bytes) else document
        site = tomllib.loads(text.removeprefix("\ufeff")).get("site", {})
        name = site.get("name") if isinstance(site, dict) else None
    except (ValueError, RecursionError):  # not TOML (or too big or deep for tomllib)
        name = None
    return name if isinstance(name, str) and re.fullmatch(r"[a-z0-9][a-z0-9-]{0,63}", name) else "fuzzed"


def profile_account_example(document: str | bytes) -> str | None:
    try:
        text = document.decode("utf-8") if isinstance(document, bytes) else document
        account = tomllib.loads(text.removeprefix("\ufeff")).get("account", {})
    except (ValueError, RecursionError):
        return None
    example = account.get("example") if isinstance(account, dict) else None
    return example if isinstance(example, str) and example and "\x00" not in example else None


@pytest.fixture
def accounts_for_every_site(aif_home: Path) -> Path:
    """A config that makes every shipped site usable, so render gets past the account check."""
    lines = []
    for site in SHIPPED_SITES:
        example = load_profile(REPO / "profiles" / f"{site}.toml").account_example or "acct"
        lines.append(f'[sites.{site}]\naccount = "{example}"\nuser = "alice"\n')
    (aif_home / "config.toml").write_text("\n".join(lines))
    return aif_home


# -- the loaders ------------------------------------------------------------------------------


@FUZZ
@given(document=documents(SPEC_FILES))
def test_fuzz_spec_loader(tmp_path: Path, document: str | bytes) -> None:
    path = tmp_path / "spec.toml"
    write_document(path, document)
    try:
        load_spec(path)
    except SpecError as exc:
        clean_message(exc.message, path)


@FUZZ
@given(document=documents(PROFILE_FILES))
def test_fuzz_profile_loader(tmp_path: Path, document: str | bytes) -> None:
    path = tmp_path / f"{profile_file_name(document)}.toml"
    write_document(path, document)
    try:
        load_profile(path)
    except ProfileError as exc:
        clean_message(exc.message, path)


@FUZZ
@given(document=documents(CONFIG_FILES))
def test_fuzz_config_loader(tmp_path: Path, document: str | bytes) -> None:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    path = home / "config.toml"
    write_document(path, document)
    try:
        config = load_config(home)
    except ConfigError as exc:
        clean_message(exc.message, path)
        return
    profiles = load_profiles(home)
    for problem in stray_config_entries(config, profiles).values():
        clean_message(problem, path)
    check_config_sites(config, profiles)


# -- the CLI --------------------------------------------------------------------------------------


@FUZZ
@given(document=documents(SPEC_FILES), site=st.sampled_from(SHIPPED_SITES))
def test_fuzz_render(accounts_for_every_site: Path, tmp_path: Path, document: str | bytes, site: str) -> None:
    path = tmp_path / "spec.toml"
    write_document(path, document)
    result = CliRunner().invoke(main, ["render", str(path), "--site", site])
    # 4: a valid spec no partition of this site fits.
    clean_exit(result, {0, 3, 4})


@FUZZ
@given(document=documents(SPEC_FILES))
def test_fuzz_submit_dry_run_placement(
    accounts_for_every_site: Path, tmp_path: Path, document: str | bytes, idle_sites: object
) -> None:
    """No site named: the spec is placed among every site (the federation), rendered, and nothing is sent."""
    path = tmp_path / "spec.toml"
    write_document(path, document)
    clean_exit(CliRunner().invoke(main, ["submit", "--dry-run", str(path)]), {0, 3, 4})


@FUZZ
@given(profile=documents(PROFILE_FILES), spec=st.sampled_from(SPEC_FILES))
def test_fuzz_render_at_a_mutated_site(aif_home: Path, profile: str | bytes, spec: Path) -> None:
    """A real spec rendered for a mutated profile in $AIF_HOME/profiles (its account from its example)."""
    profiles = aif_home / "profiles"
    profiles.mkdir(exist_ok=True)
    for old in profiles.iterdir():
        old.unlink()
    name = profile_file_name(profile)
    write_document(profiles / f"{name}.toml", profile)
    args = ["render", str(spec), "--site", name]
    example = profile_account_example(profile)
    if example:
        args += ["--account", example]
    clean_exit(CliRunner().invoke(main, args), {0, 3, 4})


@FUZZ
@given(document=documents(PROFILE_FILES))
def test_fuzz_profile_validate(tmp_path: Path, document: str | bytes) -> None:
    path = tmp_path / f"{profile_file_name(document)}.toml"
    write_document(path, document)
    clean_exit(CliRunner().invoke(main, ["profile", "validate", str(path)]), {0, 3})


@FUZZ
@given(config=documents(CONFIG_FILES), profile=documents(PROFILE_FILES))
def test_fuzz_sites_with_a_config_and_a_profile(
    aif_home: Path, config: str | bytes, profile: str | bytes
) -> None:
    """A broken profile never fails `aif sites`; only an invalid config does (exit 3)."""
    write_document(aif_home / "config.toml", config)
    profiles = aif_home / "profiles"
    profiles.mkdir(exist_ok=True)
    for old in profiles.iterdir():
        old.unlink()
    write_document(profiles / f"{profile_file_name(profile)}.toml", profile)
    try:
        load_config()
    except InvalidInput:
        expected = 3
    else:
        expected = 0
    result = CliRunner().invoke(main, ["sites", "--json"])
    clean_exit(result, {expected})
    if expected == 0:
        listed = json.loads(result.stdout)
        assert all(s["usable"] or s["problem"] for s in listed)


# -- what the fuzzer found, pinned ------------------------------------------------------------------

FOUND = {
    # tomllib's int() refuses more than 4300 decimal digits with a ValueError, not a TOMLDecodeError.
    "a decimal integer of 5000 digits": "x = " + "9" * 5000 + "\n",
    # Nesting deeper than Python's recursion limit: tomllib raises RecursionError.
    "arrays nested 3000 deep": "x = " + "[" * 3000 + "]" * 3000 + "\n",
    "inline tables nested 3000 deep": "x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n",
}


@pytest.mark.parametrize("document", FOUND.values(), ids=FOUND.keys())
def test_fuzz_regressions_unreadable_toml(tmp_path: Path, document: str) -> None:
    path = tmp_path / "doc.toml"
    path.write_text(document)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    clean_message(info.value.message, path)
    assert "not valid TOML" in info.value.message
    with pytest.raises(ProfileError):
        load_profile(path)


def test_fuzz_regression_a_huge_hex_integer_is_shown_without_printing_it(tmp_path: Path) -> None:
    """0xfff... parses (hex has no digit limit), but its decimal repr raised ValueError in show_value."""
    path = tmp_path / "spec.toml"
    path.write_text("[job]\nname = 'n'\ncommand = ['x']\n[resources]\nnodes = 0x" + "f" * 5000 + "\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    clean_message(info.value.message, path)
    assert "resources.nodes: an integer of about 6021 digits is not allowed" in info.value.message


@pytest.mark.parametrize("pattern", ["a{4294967296}", "(?<", "[", "\\"])
def test_fuzz_regression_an_account_pattern_python_cannot_compile(tmp_path: Path, pattern: str) -> None:
    """re.compile raises OverflowError (not re.error) for a repetition count over 2**32."""
    text = (REPO / "profiles" / "lumi.toml").read_text()
    path = tmp_path / "lumi.toml"
    path.write_text(
        re.sub(r"(?m)^pattern = .*$", lambda _: f"pattern = {json.dumps(pattern)}", text, count=1)
    )
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    clean_message(info.value.message, path)
    assert (
        "account.pattern: " in info.value.message and "not a valid regular expression" in info.value.message
    )
