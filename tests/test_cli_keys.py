"""`jinshui keys add | retire` on the keys file itself (the rotation with servers: tests/e2e/test_key_rotation.py)."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest

from jinshui.cli.main import build_parser
from jinshui.kit.keyfile import write_keyring
from jinshui.kit.pii import KEYS_FILE_ENV, Keyring


def keys(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        parsed = build_parser().parse_args(["keys", *args])
        code = parsed.func(parsed)
    return code, out.getvalue()


@pytest.fixture
def keys_file(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.delenv(KEYS_FILE_ENV, raising=False)
    path = tmp_path / "secrets" / "pii.json"
    write_keyring(path, Keyring.generate())
    return path


def test_add_makes_a_new_key_active_and_keeps_the_old_ones_and_the_hash_key(keys_file: Path) -> None:
    before = Keyring.from_json(keys_file.read_bytes())
    sealed = before.protect_id_number("11010519491231002X")
    assert keys("add", "--file", str(keys_file))[0] == 0
    code, out = keys("add", "--file", str(keys_file), "--id", "spring-2027")
    assert code == 0 and "added spring-2027" in out
    after = Keyring.from_json(keys_file.read_bytes())
    assert after.active == "spring-2027" and set(after.keys) == {"k1", "k2", "spring-2027"}
    assert after.keys["k1"] == before.keys["k1"] and after.reveal(sealed) == "11010519491231002X"
    assert (after.hash_key_id, after.hash_key) == (before.hash_key_id, before.hash_key)
    assert after.lookup_hash("id_number", "11010519491231002X") == sealed.hash
    assert oct(os.stat(keys_file).st_mode & 0o777) == "0o600"


def test_a_key_id_is_never_reused_and_the_active_key_is_never_retired(keys_file: Path) -> None:
    code, out = keys("add", "--file", str(keys_file), "--id", "k1")
    assert code == 1 and "there is a key 'k1' already" in out
    code, out = keys("retire", "k1", "--file", str(keys_file))
    assert code == 1 and "k1 is the active key" in out
    code, out = keys("retire", "k9", "--file", str(keys_file))
    assert code == 1 and "there is no key 'k9'" in out
    assert Keyring.from_json(keys_file.read_bytes()).keys.keys() == {"k1"}


def test_a_missing_keys_file_is_named(tmp_path: Path) -> None:
    code, out = keys("add", "--file", str(tmp_path / "nowhere.json"))
    assert code == 1 and "cannot read the keys file" in out and "nowhere.json" in out
