"""gateway.pathtext gives exactly the text pathlib gives, for any path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.home import aif_home, aif_home_text
from gateway.pathtext import child_text, expand_user_text, file_stem, path_text, toml_files

# Paths made of the parts that matter to pathlib: slashes, dots, tildes, suffixes.
PATHS = st.lists(st.sampled_from(["/", "//", ".", "..", "a", "~", "~root", "x.toml", ".toml", "a.b.c"])).map(
    "".join
)
HOMES = ["/", "/root/", "//h", "/r//s/./", "rel/home"]


def expanded(text: str) -> str:
    try:
        return str(Path(text).expanduser())
    except RuntimeError as exc:
        return f"RuntimeError: {exc}"


def expanded_text(text: str) -> str:
    try:
        return expand_user_text(text)
    except RuntimeError as exc:
        return f"RuntimeError: {exc}"


@given(PATHS, st.sampled_from(["c", "a/b", "x.toml", ".aif", "config.d"]))
def test_paths_read_as_pathlib_reads_them(text: str, name: str) -> None:
    assert path_text(text) == str(Path(text))
    assert path_text(Path(text)) == str(Path(text))
    assert child_text(text, name) == str(Path(text) / name)
    assert file_stem(path_text(text)) == Path(text).stem


@given(PATHS, st.sampled_from(HOMES))
def test_a_tilde_expands_as_pathlib_expands_it(text: str, home: str) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", home)
        assert expanded_text(text) == expanded(text)
        assert expanded_text("~") == expanded("~")


@pytest.mark.parametrize("value", [None, "/tmp/aif//home/", "~/.aif-x", "./rel", "~nosuchuser42/x"])
def test_the_home_as_text_is_the_homes_path(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("AIF_HOME", raising=False)
    else:
        monkeypatch.setenv("AIF_HOME", value)
    try:
        expected = str(aif_home())
    except RuntimeError:
        with pytest.raises(RuntimeError):
            aif_home_text()
        return
    assert aif_home_text() == expected


def test_toml_files_are_what_glob_finds(tmp_path: Path) -> None:
    for name in ("b.toml", "a.toml", ".hidden.toml", ".toml", "x.toml.bak", "notes.txt", "B.TOML"):
        (tmp_path / name).write_text("")
    (tmp_path / "dir.toml").mkdir()
    (tmp_path / "dangling.toml").symlink_to(tmp_path / "nowhere")
    assert toml_files(str(tmp_path)) == [str(p) for p in sorted(tmp_path.glob("*.toml"))]
    assert toml_files(str(tmp_path / "missing")) == [] == sorted((tmp_path / "missing").glob("*.toml"))
    assert toml_files(str(tmp_path / "notes.txt")) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_an_unreadable_directory_has_no_toml_files(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "a.toml").write_text("")
    locked.chmod(0o000)
    try:
        assert toml_files(str(locked)) == [] == sorted(locked.glob("*.toml"))
    finally:
        locked.chmod(0o700)
