"""`jinshui keys status | add | retire KEY_ID`: rotate the keys that seal ID numbers and phones.

The keys file is JINSHUI_PII_KEYS_FILE when set, else `keys/pii.json` under --home (development). `add` puts a
new AES-256 key in it and makes it the active one; the old keys stay, for reading. The gateway and the registry
look at the file every second and take the new keys without a restart; the registry then re-seals, in the
background, every stored value sealed under another key (progress: `jinshui keys status`, or
`jinshui_pii_sealed_values` on the registry's /metrics). `retire` removes a key once no stored value uses it,
and refuses while any does (it counts in the registry's tables), or while it is the active key.

The keyed look-up hash has its own key, which none of this changes: rotating it means recomputing every stored
hash and every copy other services keep (incidents and risk match persons by it); that is a separate, offline
procedure (see README).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from pathlib import Path

import asyncpg

from jinshui.cli import opsconn
from jinshui.kit.keyfile import write_keyring
from jinshui.kit.pii import KEYS_FILE_ENV, Keyring, PersonalDataKeysError

REGISTRY_SCHEMA = "registry"


def _path(args: argparse.Namespace) -> Path:
    if args.file:
        return Path(args.file)
    if os.environ.get(KEYS_FILE_ENV):
        return Path(os.environ[KEYS_FILE_ENV])
    return Keyring.development_path(Path(args.home).resolve())


def _load(path: Path) -> Keyring:
    try:
        return Keyring.from_json(path.read_bytes())
    except OSError as e:
        raise opsconn.OpsError(f"cannot read the keys file {path}: {e.strerror}") from None
    except PersonalDataKeysError as e:
        raise opsconn.OpsError(f"the keys file {path} is not usable: {e}") from None


def _next_id(keyring: Keyring) -> str:
    numbers = [int(m.group(1)) for k in keyring.keys if (m := re.fullmatch(r"k([0-9]+)", k))]
    return f"k{max(numbers, default=0) + 1}"


async def sealed_by_key(database_url: str) -> dict[str, int]:
    """Stored values per key id, counted in the registry's tables."""
    from jinshui.registry.rekey import count_by_key

    try:
        conn = await asyncpg.connect(database_url, server_settings={"search_path": REGISTRY_SCHEMA})
    except Exception as e:
        raise opsconn.OpsError(f"cannot connect to PostgreSQL: {e!r}") from e
    try:
        return await count_by_key(conn)
    except asyncpg.UndefinedTableError:
        return {}  # the registry never started on this database: nothing is stored
    finally:
        await conn.close()


def _database_url(args: argparse.Namespace) -> str:
    url = opsconn.endpoints(args).database_url
    if not url:
        raise opsconn.OpsError("no PostgreSQL to count in: give --database-url or DATABASE_URL, or run jinshui up")
    return url


def cmd_status(args: argparse.Namespace) -> int:
    path = _path(args)
    keyring = _load(path)
    counts = asyncio.run(sealed_by_key(_database_url(args)))
    print(f"keys file: {path}")
    print(f"hash key:  {keyring.hash_key_id} (not rotated by these commands)")
    for key_id in sorted(set(keyring.keys) | set(counts)):
        state = "active" if key_id == keyring.active else ("for reading" if key_id in keyring.keys else "MISSING")
        print(f"  {key_id:<12} {state:<12} {counts.get(key_id, 0):>10} stored values")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    path = _path(args)
    keyring = _load(path)
    key_id = args.id or _next_id(keyring)
    if key_id in keyring.keys:
        raise opsconn.OpsError(f"there is a key {key_id!r} already; keys are never replaced, add another id")
    try:
        rotated = Keyring(
            active=key_id,
            keys={**keyring.keys, key_id: os.urandom(32)},
            hash_key_id=keyring.hash_key_id,
            hash_key=keyring.hash_key,
        )
    except PersonalDataKeysError as e:
        raise opsconn.OpsError(str(e)) from None
    write_keyring(path, rotated)
    print(f"added {key_id}, now active; {', '.join(sorted(keyring.keys))} kept for reading ({path})")
    print("the registry re-seals stored values in the background: `jinshui keys status` shows the progress")
    return 0


def cmd_retire(args: argparse.Namespace) -> int:
    path = _path(args)
    keyring = _load(path)
    key_id = args.key_id
    if key_id not in keyring.keys:
        raise opsconn.OpsError(f"there is no key {key_id!r} in {path}")
    if key_id == keyring.active:
        raise opsconn.OpsError(f"{key_id} is the active key: add a new one first (jinshui keys add)")
    in_use = asyncio.run(sealed_by_key(_database_url(args))).get(key_id, 0)
    if in_use:
        raise opsconn.OpsError(
            f"{key_id} still seals {in_use} stored values: wait until the registry has re-sealed them "
            "(jinshui keys status), then retire it"
        )
    remaining = {k: v for k, v in keyring.keys.items() if k != key_id}
    write_keyring(
        path, Keyring(active=keyring.active, keys=remaining, hash_key_id=keyring.hash_key_id, hash_key=keyring.hash_key)
    )
    print(f"retired {key_id}; keys now: {', '.join(sorted(remaining))} (active {keyring.active})")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    try:
        return args.keys_func(args)
    except opsconn.OpsError as e:
        print(f"jinshui keys: {e}", file=sys.stderr)
        return 1


def add_parser(sub, default_home: str) -> None:
    p = sub.add_parser(
        "keys",
        help="personal-data keys: add a new active key, retire an old one",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ksub = p.add_subparsers(dest="keys_command", required=True)
    status = ksub.add_parser("status", help="the keys, which is active, how many stored values each seals")
    status.set_defaults(keys_func=cmd_status)
    add = ksub.add_parser("add", help="a new key becomes active (the old ones stay, for reading)")
    add.add_argument("--id", default=None, help="its id (default: k<N+1>)")
    add.set_defaults(keys_func=cmd_add)
    retire = ksub.add_parser("retire", help="remove a key no stored value uses any more")
    retire.add_argument("key_id")
    retire.set_defaults(keys_func=cmd_retire)
    for q in (status, add, retire):
        q.add_argument("--file", default=None, help=f"the keys file (default: {KEYS_FILE_ENV}, else under --home)")
        opsconn.add_arguments(q, default_home, database=True)
    p.set_defaults(func=cmd_keys)
