"""The user's config: accounts per site, merged from config.toml and config.d/."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError


def test_sites_accounts_and_config_d_merge(aif_home: Path) -> None:
    (aif_home / "config.toml").write_text('[sites.lumi]\naccount = "project_465000123"\nuser = "alice"\n')
    (aif_home / "config.d").mkdir()
    (aif_home / "config.d" / "sandbox.toml").write_text(
        '[sites.sandbox-north]\nuser = "aifuser"\nport = 2231\n'
    )
    config = load_config()
    assert config.access("lumi").account == "project_465000123"
    assert config.access("lumi").user == "alice"
    assert config.access("sandbox-north").port == 2231
    assert config.access("unknown").account is None


def test_missing_config_is_empty(aif_home: Path) -> None:
    assert load_config().sites == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[sites.lumi]\naccont = "x"\n', "sites.lumi.accont: unknown key, did you mean 'account'?"),
        ('[sites.lumi]\naccount = "a b"\n', "sites.lumi.account: 'a b' is not allowed"),
        ('[sites.lumi]\ntransport = "telnet"\n', "sites.lumi.transport: 'telnet' is not allowed"),
        ("[sites.lumi]\nport = 0\n", "sites.lumi.port: 0 is not allowed"),
        ("[sites.Bad_Name]\n", "is not a site name"),
        ("[site.lumi]\n", "site: unknown key, did you mean 'sites'?"),
        ("sites = 3\n", "sites: expected tables"),
    ],
)
def test_config_errors_name_the_file_and_key(aif_home: Path, text: str, expected: str) -> None:
    (aif_home / "config.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(info.value).startswith(str(aif_home / "config.toml"))
    assert expected in str(info.value)


def test_a_site_name_with_a_newline_is_escaped(aif_home: Path) -> None:
    (aif_home / "config.toml").write_text('[sites."lu\\nmi"]\naccount = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config()
    assert "sites.'lu\\nmi': 'lu\\nmi' is not a site name" in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_a_byte_order_mark_is_accepted(aif_home: Path) -> None:
    (aif_home / "config.toml").write_bytes(b"\xef\xbb\xbf" + b'[sites.lumi]\naccount = "project_465000123"\n')
    assert load_config().access("lumi").account == "project_465000123"
