"""Household codes (一户一码): short, unambiguous when read aloud or typed from paper, with a check character.

The alphabet leaves out 0/O and 1/I, and Z (read as 2), leaving 31 characters: a prime, so that ISO 7064's
pure system MOD 31-2 (python-stdnum's mod_37_2 with this alphabet) catches every single mistyped character and
every swap of two neighbours.
"""

from __future__ import annotations

import secrets

from stdnum.iso7064 import mod_37_2

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXY"
BODY_LENGTH = 8
assert len(ALPHABET) == 31


def with_check(body: str) -> str:
    return body + mod_37_2.calc_check_digit(body, alphabet=ALPHABET)


def new_code() -> str:
    return with_check("".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH)))


def normalize(code: str) -> str:
    """As typed: spaces and hyphens dropped, upper case."""
    return code.replace(" ", "").replace("-", "").upper()


def looks_generated(code: str) -> bool:
    return len(code) == BODY_LENGTH + 1 and all(c in ALPHABET for c in code)


def is_valid(code: str) -> bool:
    return looks_generated(code) and mod_37_2.is_valid(code, alphabet=ALPHABET)
