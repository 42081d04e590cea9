"""Personal data at the door: resident ID numbers and phones become {keyed hash, ciphertext, key id, masked form}."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

Kind = Literal["id_number", "phone"]
KINDS: tuple[Kind, ...] = ("id_number", "phone")
KEYS_ENV = "JINSHUI_PII_KEYS"
KEYS_FILE_ENV = "JINSHUI_PII_KEYS_FILE"
KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,32}")
NONCE_BYTES = 12
CHINA = timezone(timedelta(hours=8))

__all__ = [
    "KEYS_ENV",
    "KEYS_FILE_ENV",
    "IdNumber",
    "Keyring",
    "PersonalDataError",
    "PersonalDataKeysError",
    "Phone",
    "Protected",
    "RedactingFilter",
    "RevealError",
    "id_number_check_digit",
    "mask_id_number",
    "mask_phone",
    "normalize_id_number",
    "normalize_phone",
    "redact",
]


class PersonalDataError(ValueError):
    """A value that is not a valid ID number or phone; `reason` says why, in words a caller can act on."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


class PersonalDataKeysError(RuntimeError):
    """The keys are missing or malformed."""


class RevealError(Exception):
    """A ciphertext that cannot be read: an unknown key id, tampering, or the wrong kind."""


# --- ID numbers (GB 11643) -----------------------------------------------------------------------
_WEIGHTS = [pow(2, 17 - i, 11) for i in range(17)]
_CHECK = "10X98765432"


_ID_SHAPE = re.compile(r"[0-9]{17}[0-9X]")
_SPACES = re.compile(r"\s+")


def id_number_check_digit(first17: str) -> str:
    """The GB 11643 (ISO 7064 MOD 11-2) check character for the first 17 digits."""
    if len(first17) != 17 or not (first17.isascii() and first17.isdigit()):
        raise ValueError("17 digits expected")
    w = _WEIGHTS
    d = [c - 48 for c in first17.encode()]
    total = (
        d[0] * w[0] + d[1] * w[1] + d[2] * w[2] + d[3] * w[3] + d[4] * w[4] + d[5] * w[5] + d[6] * w[6]
        + d[7] * w[7] + d[8] * w[8] + d[9] * w[9] + d[10] * w[10] + d[11] * w[11] + d[12] * w[12]
        + d[13] * w[13] + d[14] * w[14] + d[15] * w[15] + d[16] * w[16]
    )  # fmt: skip
    return _CHECK[total % 11]


def _compact(value: str) -> str:
    if value.isascii():  # NFKC changes nothing in ASCII (the common case: a bulk import's millions of rows)
        return _SPACES.sub("", value) if not value.isalnum() else value
    return _SPACES.sub("", unicodedata.normalize("NFKC", value))


def normalize_id_number(value: str, *, field: str = "id_number") -> str:
    """The ID number with spaces removed and X upper-cased, or PersonalDataError saying what is wrong with it."""
    if not isinstance(value, str):
        raise PersonalDataError(field, "not a string")
    s = _compact(value).upper()
    if len(s) != 18:
        raise PersonalDataError(field, "not 18 characters")
    if not _ID_SHAPE.fullmatch(s):
        raise PersonalDataError(field, "not 17 digits followed by a digit or X")
    try:
        born = date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        raise PersonalDataError(field, "not a valid date of birth") from None
    if born.year < 1880 or born > datetime.now(CHINA).date():
        raise PersonalDataError(field, "not a valid date of birth")
    if id_number_check_digit(s[:17]) != s[17]:
        raise PersonalDataError(field, "the check digit does not match")
    return s


def mask_id_number(value: str) -> str:
    """370502********1234: the region (first 6) and the last 4 kept; the check digit is not checked."""
    s = _compact(value).upper() if isinstance(value, str) else ""
    if not _ID_SHAPE.fullmatch(s):
        raise PersonalDataError("id_number", "not 18 characters" if len(s) != 18 else "not an ID number")
    return s[:6] + "*" * 8 + s[-4:]


# --- phones --------------------------------------------------------------------------------------
_MOBILE = re.compile(r"1[3-9][0-9]{9}")


def normalize_phone(value: str, *, field: str = "phone") -> str:
    """A mainland mobile as 11 digits, or a landline as AREA-LOCAL (0535-1234567); else PersonalDataError."""
    if not isinstance(value, str):
        raise PersonalDataError(field, "not a string")
    s = re.sub(r"[\s\-()]", "", unicodedata.normalize("NFKC", value))
    international = False
    for prefix in ("+86", "0086"):
        if s.startswith(prefix):
            s, international = s[len(prefix) :], True
            break
    else:
        if len(s) == 13 and s.startswith("86") and _MOBILE.fullmatch(s[2:]):
            s = s[2:]
    if _MOBILE.fullmatch(s):
        return s
    if international and not s.startswith("0"):
        s = "0" + s
    if re.fullmatch(r"0[0-9]{9,11}", s):
        area = 3 if s[1] in "12" else 4  # 010 and 02x are the three-digit area codes
        local = s[area:]
        if re.fullmatch(r"[1-9][0-9]{6,7}", local):
            return f"{s[:area]}-{local}"
    raise PersonalDataError(field, "not a mobile or landline number")


def mask_phone(value: str) -> str:
    """138****5678 for a mobile; 0535-****567 for a landline (area code and the last 3 or 4 kept)."""
    s = normalize_phone(value)
    if "-" not in s:
        return s[:3] + "****" + s[-4:]
    area, local = s.split("-")
    return f"{area}-{'*' * 4}{local[4:]}"


# --- pydantic input types ------------------------------------------------------------------------
def _validated(kind: Kind):
    normalize = normalize_id_number if kind == "id_number" else normalize_phone
    what = "resident ID number" if kind == "id_number" else "phone number"

    def check(value: str) -> str:
        try:
            return normalize(value)
        except PersonalDataError as e:
            raise PydanticCustomError(
                f"invalid_{kind}", f"not a valid {what}: {{reason}}", {"reason": e.reason}
            ) from None

    return check


IdNumber = Annotated[
    str,
    AfterValidator(_validated("id_number")),
    Field(description="Resident ID number (18 characters, GB 11643)", examples=["11010519491231002X"]),
]
Phone = Annotated[
    str,
    AfterValidator(_validated("phone")),
    Field(description="Mainland mobile (13812345678) or landline with area code (0535-1234567)"),
]


# --- protection ----------------------------------------------------------------------------------
class Protected(BaseModel):
    """An ID number or phone as it may travel and be stored outside the registry's keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Kind
    hash: str = Field(description="keyed HMAC-SHA256 for exact look-up, prefixed with the hash key id")
    ciphertext: str = Field(description="base64 of nonce + AES-256-GCM ciphertext")
    key_id: str
    masked: str


def _b64key(value: Any, what: str, *, size: int | None = None) -> bytes:
    try:
        key = base64.b64decode(value, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise PersonalDataKeysError(f"{what} is not base64") from None
    if size is not None and len(key) != size:
        raise PersonalDataKeysError(f"{what} is {len(key)} bytes, not {size}")
    if len(key) < 32:
        raise PersonalDataKeysError(f"{what} is shorter than 32 bytes")
    return key


def _key_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not KEY_ID.fullmatch(value):
        raise PersonalDataKeysError(f"{what} {value!r} is not a key id (letters, digits, _ . -; up to 32)")
    return value


def _write_new_secret_file(path: Path, data: bytes) -> None:
    """Create `path` (mode 0600) atomically; if another process made it first, theirs is kept."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(f".{os.getpid()}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True, repr=False)
class Keyring:
    """Encryption keys by id (one active), and the hash key; protects, reveals and hashes personal data."""

    active: str
    keys: Mapping[str, bytes]
    hash_key_id: str
    hash_key: bytes
    _aead: dict[str, AESGCM] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.active not in self.keys:
            raise PersonalDataKeysError(f"the active key {self.active!r} is not among the keys")
        for key_id, key in self.keys.items():
            _key_id(key_id, "encryption key id")
            if len(key) != 32:
                raise PersonalDataKeysError(f"encryption key {key_id!r} is {len(key)} bytes, not 32")
            self._aead[key_id] = AESGCM(key)
        _key_id(self.hash_key_id, "hash key id")
        if len(self.hash_key) < 32:
            raise PersonalDataKeysError("the hash key is shorter than 32 bytes")

    def __repr__(self) -> str:
        return f"Keyring(active={self.active!r}, keys={sorted(self.keys)}, hash_key_id={self.hash_key_id!r})"

    # --- making and loading -----------------------------------------------------------------
    @classmethod
    def generate(cls, *, key_id: str = "k1", hash_key_id: str = "h1") -> Keyring:
        """A keyring with fresh random keys."""
        return cls(active=key_id, keys={key_id: os.urandom(32)}, hash_key_id=hash_key_id, hash_key=os.urandom(32))

    @classmethod
    def from_json(cls, text: str | bytes) -> Keyring:
        """{"active": "k2", "keys": {"k1": b64, "k2": b64}, "hash_key": {"id": "h1", "key": b64}}."""
        try:
            doc = json.loads(text)
        except ValueError:
            raise PersonalDataKeysError("the personal-data keys are not valid JSON") from None
        if (
            not isinstance(doc, dict)
            or not isinstance(doc.get("keys"), dict)
            or not isinstance(doc.get("hash_key"), dict)
        ):
            raise PersonalDataKeysError('the personal-data keys need "active", "keys" and "hash_key"')
        keys = {
            _key_id(k, "encryption key id"): _b64key(v, f"encryption key {k!r}", size=32)
            for k, v in doc["keys"].items()
        }
        if not keys:
            raise PersonalDataKeysError("there are no encryption keys")
        return cls(
            active=_key_id(doc.get("active"), "active key id"),
            keys=keys,
            hash_key_id=_key_id(doc["hash_key"].get("id"), "hash key id"),
            hash_key=_b64key(doc["hash_key"].get("key"), "the hash key"),
        )

    def to_json(self) -> str:
        """The keys document (secret: write it only where secrets go)."""
        b64 = lambda key: base64.b64encode(key).decode()  # noqa: E731
        return json.dumps(
            {
                "active": self.active,
                "keys": {k: b64(v) for k, v in self.keys.items()},
                "hash_key": {"id": self.hash_key_id, "key": b64(self.hash_key)},
            },
            indent=2,
        )

    @classmethod
    def load(
        cls,
        *,
        home: Path,
        environment: str,
        keys_json: str | None = None,
        keys_file: Path | str | None = None,
    ) -> Keyring:
        """The keys given (JSON or a secrets file); in development and tests, else ones kept under home/keys."""
        if keys_json and keys_file:
            raise PersonalDataKeysError(f"set {KEYS_ENV} or {KEYS_FILE_ENV}, not both")
        if keys_json:
            return cls.from_json(keys_json)
        if keys_file:
            try:
                return cls.from_json(Path(keys_file).read_bytes())
            except OSError as e:
                raise PersonalDataKeysError(f"the personal-data keys file cannot be read: {e}") from None
        if environment not in ("development", "test"):
            raise PersonalDataKeysError(
                f"{KEYS_ENV} or {KEYS_FILE_ENV} must give the personal-data keys in {environment}"
            )
        path = cls.development_path(home)
        if not path.exists():
            _write_new_secret_file(path, cls.generate().to_json().encode())
        return cls.from_json(path.read_bytes())

    @classmethod
    def from_environment(cls, *, home: Path, environment: str, env: Mapping[str, str] | None = None) -> Keyring:
        """`load` with JINSHUI_PII_KEYS / JINSHUI_PII_KEYS_FILE read from `env` (default: the process's)."""
        env = os.environ if env is None else env
        return cls.load(
            home=home,
            environment=environment,
            keys_json=env.get(KEYS_ENV) or None,
            keys_file=env.get(KEYS_FILE_ENV) or None,
        )

    @staticmethod
    def development_path(home: Path) -> Path:
        return Path(home) / "keys" / "pii.json"

    # --- use ------------------------------------------------------------------------------------
    @staticmethod
    def _aad(kind: str, key_id: str) -> bytes:
        return f"jinshui.pii.v1|{kind}|{key_id}".encode()

    def _hash(self, kind: Kind, normal: str) -> str:
        digest = hmac.new(self.hash_key, f"{kind}:{normal}".encode(), hashlib.sha256).hexdigest()
        return f"{self.hash_key_id}:{digest}"

    def _fields(self, kind: Kind, normal: str, masked: str) -> dict[str, str]:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead[self.active].encrypt(nonce, normal.encode(), self._aad(kind, self.active))
        return {
            "kind": kind,
            "hash": self._hash(kind, normal),
            "ciphertext": base64.b64encode(nonce + sealed).decode(),
            "key_id": self.active,
            "masked": masked,
        }

    def _protect(self, kind: Kind, normal: str, masked: str) -> Protected:
        # Every field is made here, of the right type: no validation to repeat (a bulk import makes millions).
        return Protected.model_construct(**self._fields(kind, normal, masked))

    def protect_id_number(self, value: str, *, field: str = "id_number") -> Protected:
        """Validate an ID number and protect it; PersonalDataError names `field` and the reason."""
        normal = normalize_id_number(value, field=field)
        return self._protect("id_number", normal, mask_id_number(normal))

    def protect_phone(self, value: str, *, field: str = "phone") -> Protected:
        """Validate a phone and protect it; PersonalDataError names `field` and the reason."""
        normal = normalize_phone(value, field=field)
        return self._protect("phone", normal, mask_phone(normal))

    def seal(self, kind: Kind, normal: str) -> Protected:
        """Protect a value that normalize_id_number / normalize_phone already returned (no second validation)."""
        return Protected.model_construct(**self.seal_fields(kind, normal))

    def seal_fields(self, kind: Kind, normal: str) -> dict[str, str]:
        """seal() as the dict its model_dump() gives, with no model made: for bulk paths that store it as JSON."""
        masked = mask_id_number(normal) if kind == "id_number" else mask_phone(normal)
        return self._fields(kind, normal, masked)

    def protect(self, kind: Kind, value: str, *, field: str | None = None) -> Protected:
        """protect_id_number or protect_phone, by kind."""
        if kind == "id_number":
            return self.protect_id_number(value, field=field or kind)
        if kind == "phone":
            return self.protect_phone(value, field=field or kind)
        raise ValueError(f"unknown kind {kind!r}")

    def reveal(self, protected: Protected) -> str:
        """The value in clear, decrypted with the key its key_id names; RevealError if that cannot be done."""
        aead = self._aead.get(protected.key_id)
        if aead is None:
            raise RevealError(f"no key {protected.key_id!r} in this keyring")
        try:
            raw = base64.b64decode(protected.ciphertext, validate=True)
        except (binascii.Error, ValueError):
            raise RevealError("the ciphertext is not base64") from None
        if len(raw) < NONCE_BYTES + 16:
            raise RevealError("the ciphertext is too short")
        try:
            clear = aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], self._aad(protected.kind, protected.key_id))
        except InvalidTag:
            raise RevealError(
                f"the ciphertext does not authenticate as a {protected.kind} under key {protected.key_id!r}"
            ) from None
        return clear.decode()

    def lookup_hash(self, kind: Kind, value: str) -> str:
        """The keyed hash to search by for an exact match (the value is normalised and validated first)."""
        if kind == "id_number":
            return self._hash(kind, normalize_id_number(value))
        if kind == "phone":
            return self._hash(kind, normalize_phone(value))
        raise ValueError(f"unknown kind {kind!r}")


# --- logs ----------------------------------------------------------------------------------------
_ID_IN_TEXT = re.compile(r"(?<![0-9A-Za-z])([0-9]{6})[ ]?[0-9]{4}[ ]?[0-9]{4}[ ]?([0-9]{3}[0-9Xx])(?![0-9A-Za-z])")
_MOBILE_IN_TEXT = re.compile(
    r"(?<![0-9A-Za-z+])(?:(?:\+|00)?86[ -]?)?(1[3-9][0-9])[ -]?[0-9]{4}[ -]?([0-9]{4})(?![0-9A-Za-z])"
)
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "taskName"}


_NO_DIGITS = str.maketrans("", "", "0123456789")


def _is_timestamp(text: str) -> bool:
    """An ISO 8601 time in the extended form the contracts write (2026-11-27T13:59:12.345678+08:00): its digit
    runs are too short for a mobile or an ID number. The basic form (T135912345678) is not one: it could be."""
    if not (19 <= len(text) <= 35 and text[4] == "-" and text[7] == "-" and text[10] == "T"):
        return False
    if text[13] != ":" or text[16] != ":":
        return False
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def redact(text: str) -> str:
    """The text with anything shaped like an 18-character ID number or an 11-digit mobile masked."""
    if len(text) < 11 or len(text) - len(text.translate(_NO_DIGITS)) < 11:
        return text  # fewer than 11 digits: neither can be in it (most strings of a payload; cheap to tell)
    if _is_timestamp(text):
        return text  # an ISO 8601 time (a visit's, a sighting's): all digits, none of them a person's
    text = _ID_IN_TEXT.sub(lambda m: m.group(1) + "*" * 8 + m.group(2)[-4:], text)
    return _MOBILE_IN_TEXT.sub(lambda m: m.group(1) + "****" + m.group(2), text)


class RedactingFilter(logging.Filter):
    """Masks ID numbers and mobiles in a record's message, args, string extras and traceback (defence in depth)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._scrub(record)
        except Exception:  # a filter must never lose the record
            record.msg, record.args = "[log record withheld: it could not be redacted]", None
        return True

    @staticmethod
    def _scrub(record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = redact(message), None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, key, redact(value))
        if record.exc_info:
            # The traceback is rendered here, redacted, and kept as exc_text; exc_info is cleared so that no
            # formatter renders it again from the exception.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)


def redact_payload(value: Any, *, keep: tuple[str, ...] = ("id_number", "phone")) -> Any:
    """A JSON-like value with ID numbers and mobiles masked in every free-text string.

    Members named in `keep` (fields the door protects on purpose) and protected values themselves are left as
    they are; everything else a person typed (a visit's note, a call's description, a reason) is masked.
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_payload(v, keep=keep) for v in value]
    if isinstance(value, dict):
        if "ciphertext" in value and "hash" in value:
            return value
        return {k: v if k in keep else redact_payload(v, keep=keep) for k, v in value.items()}
    return value
