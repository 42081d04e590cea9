"""Personal data at the door: validation, masks, the keyring (rotation, tampering, key files) and log redaction.

Every ID number here is fictitious: made up, with its check digit computed.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import threading
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, ValidationError

from jinshui.kit import problems
from jinshui.kit.pii import (
    IdNumber,
    Keyring,
    PersonalDataError,
    PersonalDataKeysError,
    Phone,
    RedactingFilter,
    RevealError,
    id_number_check_digit,
    mask_id_number,
    mask_phone,
    normalize_id_number,
    normalize_phone,
    redact,
)


def make_id(region: str = "370502", born: str = "19900101", seq: str = "123") -> str:
    first17 = region + born + seq
    return first17 + id_number_check_digit(first17)


def iso7064_mod_11_2(first17: str) -> str:
    """The check character by ISO 7064's own recurrence, independent of the weights table."""
    p = 0
    for d in first17:
        p = (p + int(d)) * 2 % 11
    c = (12 - p) % 11
    return "X" if c == 10 else str(c)


VALID_ID = make_id()
X_ID = "11010519491231002X"  # the example in GB 11643, check character X
K32 = base64.b64encode(bytes(32)).decode()
OTHER_ID = make_id(born="19851231", seq="456")


def keyring(active: str = "k1", *key_ids: str, hash_id: str = "h1", seed: int = 1) -> Keyring:
    ids = key_ids or (active,)
    return Keyring(
        active=active,
        keys={k: bytes([seed + i]) * 32 for i, k in enumerate(ids)},
        hash_key_id=hash_id,
        hash_key=bytes([seed + 100]) * 32,
    )


# --- ID numbers ----------------------------------------------------------------------------------
def test_check_digit_matches_the_standard_example_and_iso7064() -> None:
    assert id_number_check_digit(X_ID[:17]) == "X"
    for i in range(200):
        first17 = f"{110000 + i * 137:06d}{date(1950, 1, 1) + timedelta(days=i * 97):%Y%m%d}{i % 1000:03d}"
        assert id_number_check_digit(first17) == iso7064_mod_11_2(first17)


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        (VALID_ID, VALID_ID),
        (X_ID.lower(), X_ID),
        (f" {VALID_ID[:6]} {VALID_ID[6:14]} {VALID_ID[14:]} ", VALID_ID),
        ("１１０１０５１９４９１２３１００２Ｘ", X_ID),  # full-width
    ],
)
def test_valid_id_numbers_are_normalised(given: str, normal: str) -> None:
    assert normalize_id_number(given) == normal


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        (VALID_ID[:17], "not 18 characters"),
        (VALID_ID + "1", "not 18 characters"),
        ("", "not 18 characters"),
        ("37050219900101A234", "not 17 digits followed by a digit or X"),
        (make_id(born="19990230"), "not a valid date of birth"),
        (make_id(born="19901301"), "not a valid date of birth"),
        (make_id(born="18500101"), "not a valid date of birth"),
        (make_id(born=f"{date.today() + timedelta(days=3):%Y%m%d}"), "not a valid date of birth"),
        (VALID_ID[:17] + ("0" if VALID_ID[17] != "0" else "1"), "the check digit does not match"),
    ],
)
def test_invalid_id_numbers_say_why(given: str, reason: str) -> None:
    with pytest.raises(PersonalDataError) as caught:
        normalize_id_number(given, field="residents[2].id_number")
    assert caught.value.reason == reason
    assert caught.value.field == "residents[2].id_number"
    assert str(caught.value) == f"residents[2].id_number: {reason}"


def test_every_wrong_check_digit_is_caught() -> None:
    for wrong in set("0123456789X") - {VALID_ID[17]}:
        with pytest.raises(PersonalDataError, match="check digit"):
            normalize_id_number(VALID_ID[:17] + wrong)


# --- phones --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("13812345678", "13812345678"),
        ("138 1234 5678", "13812345678"),
        ("138-1234-5678", "13812345678"),
        ("+86 138 1234 5678", "13812345678"),
        ("008613812345678", "13812345678"),
        ("8613812345678", "13812345678"),
        ("１９９１２３４５６７８", "19912345678"),
        ("0535-1234567", "0535-1234567"),
        ("05351234567", "0535-1234567"),
        ("(0535) 1234567", "0535-1234567"),
        ("（０５３５）１２３４５６７", "0535-1234567"),
        ("010-12345678", "010-12345678"),
        ("021 6123 4567", "021-61234567"),
        ("+86 10 12345678", "010-12345678"),
    ],
)
def test_phones_are_normalised(given: str, normal: str) -> None:
    assert normalize_phone(given) == normal


@pytest.mark.parametrize(
    "given",
    ["12812345678", "1381234567", "138123456789", "phone", "", "0535-0123456", "0535-123456", "1234567", "110"],
)
def test_invalid_phones_say_why(given: str) -> None:
    with pytest.raises(PersonalDataError) as caught:
        normalize_phone(given)
    assert (caught.value.field, caught.value.reason) == ("phone", "not a mobile or landline number")


# --- masks ---------------------------------------------------------------------------------------
def test_masks() -> None:
    assert mask_id_number("370502199001011234") == "370502********1234"
    assert mask_id_number("11010519491231002x") == "110105********002X"
    assert mask_phone("13812345678") == "138****5678"
    assert mask_phone("+86 138 1234 5678") == "138****5678"
    assert mask_phone("0535-1234567") == "0535-****567"
    assert mask_phone("010-12345678") == "010-****5678"
    with pytest.raises(PersonalDataError, match="not 18 characters"):
        mask_id_number("3705021990")
    with pytest.raises(PersonalDataError, match="not a mobile or landline"):
        mask_phone("12")


# --- protection ----------------------------------------------------------------------------------
def test_round_trip_and_the_shape_of_protected() -> None:
    ring = keyring()
    p = ring.protect_id_number(f" {VALID_ID[:6]} {VALID_ID[6:]} ")
    assert (p.kind, p.key_id, p.masked) == ("id_number", "k1", mask_id_number(VALID_ID))
    assert re.fullmatch(r"h1:[0-9a-f]{64}", p.hash)
    raw = base64.b64decode(p.ciphertext)
    assert len(raw) == 12 + len(VALID_ID) + 16  # nonce, ciphertext, tag
    assert VALID_ID not in p.model_dump_json()
    assert ring.reveal(p) == VALID_ID

    phone = ring.protect_phone("+86 138 1234 5678")
    assert (phone.kind, phone.masked) == ("phone", "138****5678")
    assert ring.reveal(phone) == "13812345678"
    assert ring.reveal(ring.protect("phone", "0535-1234567")) == "0535-1234567"


def test_protect_names_the_field_on_bad_input() -> None:
    with pytest.raises(PersonalDataError) as caught:
        keyring().protect_id_number(VALID_ID[:17] + "Z", field="head.id_number")
    assert caught.value.field == "head.id_number"


def test_same_value_same_hash_fresh_nonce() -> None:
    ring = keyring()
    a, b = ring.protect_id_number(VALID_ID), ring.protect_id_number(VALID_ID)
    assert a.hash == b.hash
    assert a.ciphertext != b.ciphertext
    assert ring.protect_id_number(OTHER_ID).hash != a.hash
    assert ring.lookup_hash("id_number", VALID_ID) == a.hash
    assert ring.lookup_hash("phone", "138 1234 5678") == ring.protect_phone("13812345678").hash


def test_lookup_hash_normalises() -> None:
    ring = keyring()
    assert ring.lookup_hash("id_number", f" {X_ID.lower()} ") == ring.protect_id_number(X_ID).hash
    with pytest.raises(PersonalDataError):
        ring.lookup_hash("id_number", "not an id")


def test_hash_differs_with_another_hash_key() -> None:
    a, b = keyring(hash_id="h1", seed=1), keyring(hash_id="h2", seed=2)
    ha, hb = a.lookup_hash("id_number", VALID_ID), b.lookup_hash("id_number", VALID_ID)
    assert ha.startswith("h1:") and hb.startswith("h2:")
    assert ha.split(":")[1] != hb.split(":")[1]


def test_rotation_keeps_old_ciphertexts_readable() -> None:
    old_ring = keyring("k1", "k1")
    old = old_ring.protect_id_number(VALID_ID)
    assert old.key_id == "k1"
    doc = json.loads(old_ring.to_json())
    doc["keys"]["k2"] = base64.b64encode(b"\x07" * 32).decode()
    doc["active"] = "k2"
    new_ring = Keyring.from_json(json.dumps(doc))
    new = new_ring.protect_id_number(VALID_ID)
    assert new.key_id == "k2"
    assert new_ring.reveal(old) == VALID_ID
    assert new_ring.reveal(new) == VALID_ID
    assert new.hash == old.hash, "the hash key did not change, so look-ups still match"
    with pytest.raises(RevealError, match="no key 'k2'"):
        old_ring.reveal(new)


def test_a_flipped_ciphertext_byte_is_detected() -> None:
    ring = keyring()
    p = ring.protect_id_number(VALID_ID)
    raw = bytearray(base64.b64decode(p.ciphertext))
    for i in (0, 12, len(raw) - 1):  # the nonce, the ciphertext, the tag
        flipped = bytearray(raw)
        flipped[i] ^= 0x01
        with pytest.raises(RevealError, match="does not authenticate"):
            ring.reveal(p.model_copy(update={"ciphertext": base64.b64encode(bytes(flipped)).decode()}))


def test_a_phone_cannot_be_revealed_as_an_id_number() -> None:
    ring = keyring("k1", "k1", "k2")
    p = ring.protect_phone("13812345678")
    with pytest.raises(RevealError, match="as a id_number"):
        ring.reveal(p.model_copy(update={"kind": "id_number"}))
    with pytest.raises(RevealError, match="does not authenticate"):
        ring.reveal(p.model_copy(update={"key_id": "k2"}))
    with pytest.raises(RevealError, match="not base64"):
        ring.reveal(p.model_copy(update={"ciphertext": "***"}))


def test_the_keyring_never_shows_its_keys() -> None:
    ring = keyring()
    assert "\\x01" not in repr(ring) and base64.b64encode(ring.keys["k1"]).decode() not in repr(ring)


# --- where keys come from ------------------------------------------------------------------------
def test_development_keys_are_generated_0600_and_reused(tmp_path: Path) -> None:
    first = Keyring.load(home=tmp_path, environment="development")
    path = tmp_path / "keys" / "pii.json"
    assert path.stat().st_mode & 0o777 == 0o600
    again = Keyring.load(home=tmp_path, environment="test")
    assert again.keys == first.keys and again.hash_key == first.hash_key
    assert again.reveal(first.protect_phone("13812345678")) == "13812345678"
    assert not list(path.parent.glob("*.tmp"))


def test_concurrent_first_use_agrees_on_one_set_of_keys(tmp_path: Path) -> None:
    rings: list[Keyring] = []
    threads = [
        threading.Thread(target=lambda: rings.append(Keyring.load(home=tmp_path, environment="development")))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(rings) == 8
    assert len({r.hash_key for r in rings}) == 1


def test_production_without_keys_refuses(tmp_path: Path) -> None:
    with pytest.raises(PersonalDataKeysError, match="JINSHUI_PII_KEYS"):
        Keyring.load(home=tmp_path, environment="production")
    with pytest.raises(PersonalDataKeysError):
        Keyring.from_environment(home=tmp_path, environment="production", env={})
    assert not (tmp_path / "keys").exists()


def test_keys_from_the_environment_or_a_secrets_file(tmp_path: Path) -> None:
    doc = Keyring.generate(key_id="k7", hash_key_id="h3").to_json()
    from_env = Keyring.from_environment(home=tmp_path, environment="production", env={"JINSHUI_PII_KEYS": doc})
    assert (from_env.active, from_env.hash_key_id) == ("k7", "h3")
    secret = tmp_path / "pii-keys.json"
    secret.write_text(doc)
    from_file = Keyring.from_environment(
        home=tmp_path, environment="production", env={"JINSHUI_PII_KEYS_FILE": str(secret)}
    )
    assert from_file.keys == from_env.keys
    with pytest.raises(PersonalDataKeysError, match="not both"):
        Keyring.load(home=tmp_path, environment="production", keys_json=doc, keys_file=secret)
    with pytest.raises(PersonalDataKeysError, match="cannot be read"):
        Keyring.load(home=tmp_path, environment="production", keys_file=tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ("{not json", "not valid JSON"),
        ({"active": "k1", "keys": {}}, '"hash_key"'),
        ({"active": "k1", "keys": {}, "hash_key": {"id": "h1", "key": K32}}, "no encryption keys"),
        ({"active": "k2", "keys": {"k1": K32}, "hash_key": {"id": "h1", "key": K32}}, "not among the keys"),
        ({"active": "k1", "keys": {"k1": "AAAA"}, "hash_key": {"id": "h1", "key": K32}}, "3 bytes, not 32"),
        ({"active": "k1", "keys": {"k1": "%%%%"}, "hash_key": {"id": "h1", "key": K32}}, "not base64"),
        ({"active": "k1", "keys": {"k1": K32}, "hash_key": {"id": "h1", "key": "AAAA"}}, "shorter than 32"),
        ({"active": "k:1", "keys": {"k:1": K32}, "hash_key": {"id": "h1", "key": K32}}, "not a key id"),
    ],
)
def test_malformed_keys_are_refused(doc: object, reason: str) -> None:
    with pytest.raises(PersonalDataKeysError, match=re.escape(reason)):
        Keyring.from_json(doc if isinstance(doc, str) else json.dumps(doc))


# --- pydantic and FastAPI ------------------------------------------------------------------------
class Resident(BaseModel):
    id_number: IdNumber
    phone: Phone | None = None


def test_pydantic_types_normalise_and_explain() -> None:
    r = Resident(id_number=f" {VALID_ID.lower()} ", phone="+86 138 1234 5678")
    assert (r.id_number, r.phone) == (VALID_ID, "13812345678")
    with pytest.raises(ValidationError) as caught:
        Resident(id_number=VALID_ID[:17] + ("0" if VALID_ID[17] != "0" else "1"), phone="12")
    errors = {e["loc"][0]: e["msg"] for e in caught.value.errors()}
    assert errors == {
        "id_number": "not a valid resident ID number: the check digit does not match",
        "phone": "not a valid phone number: not a mobile or landline number",
    }


async def test_fastapi_422_problem_names_the_field_and_the_reason_without_echoing_it() -> None:
    app = FastAPI()
    problems.install(app)

    @app.post("/residents")
    def add(resident: Resident) -> dict[str, str]:
        return {"masked": mask_id_number(resident.id_number)}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        good = await client.post("/residents", json={"id_number": VALID_ID})
        bad = make_id(born="19990230")
        r = await client.post("/residents", json={"id_number": bad})
    assert good.json() == {"masked": mask_id_number(VALID_ID)}
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"] == [
        {"field": "body.id_number", "reason": "not a valid resident ID number: not a valid date of birth"}
    ]
    assert bad not in r.text


# --- logs ----------------------------------------------------------------------------------------
@pytest.fixture
def log() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s extra=%(who)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("jinshui.test.pii")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger, out
    logger.handlers.clear()


def test_redact_masks_id_numbers_and_mobiles_but_not_other_numbers() -> None:
    text = (
        f"id {VALID_ID} id2={OTHER_ID[:17]}x spaced 370502 19900101 1234 tel 13812345678 +8613912345678 "
        "139 1234 5678 keep: 1764169200000 1234567890123456789 trace 4bf92f3577b34da6a3ce929d0e0e4736"
    )
    out = redact(text)
    assert VALID_ID not in out and OTHER_ID[:17] not in out and "13812345678" not in out
    assert f"id {mask_id_number(VALID_ID)} " in out
    assert "370502********1234" in out
    assert "138****5678" in out and "139****5678" in out
    assert "1764169200000" in out and "1234567890123456789" in out and "4bf92f3577b34da6a3ce929d0e0e4736" in out
    # The shortest strings that can hold one (eleven digits and nothing else, or among Chinese text) are masked;
    # strings with fewer digits come back as they are.
    assert redact("13812345678") == "138****5678" and redact("电话13812345678。") == "电话138****5678。"
    assert redact("1381234567") == "1381234567" and redact("金水小区7号楼101") == "金水小区7号楼101"
    # A contract's time is left alone; a string that only starts like one is masked as any other.
    assert redact("2026-11-27T13:59:12.345678+08:00") == "2026-11-27T13:59:12.345678+08:00"
    for hiding in ("2026-11-27T13:59:12 13812345678", "2026-11-27T0:13812345678", "2026-11-27 13812345678"):
        assert "13812345678" not in redact(hiding) and "138****5678" in redact(hiding)


def test_the_filter_scrubs_message_args_extras_and_tracebacks(log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = log
    logger.info("resident %s called from %s", VALID_ID, "13812345678", extra={"who": "phone 13912345678"})
    try:
        raise ValueError(f"bad id {OTHER_ID}")
    except ValueError:
        logger.exception("failed for %(id)s", {"id": VALID_ID}, extra={"who": "nobody"})
    text = out.getvalue()
    for clear in (VALID_ID, OTHER_ID, "13812345678", "13912345678"):
        assert clear not in text
    assert mask_id_number(VALID_ID) in text and mask_id_number(OTHER_ID) in text
    assert "138****5678" in text and "139****5678" in text
    assert "Traceback" in text and "ValueError: bad id" in text
