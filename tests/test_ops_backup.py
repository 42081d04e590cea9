"""The restore drill: a small flow through the gateway, `jinshui backup`, everything destroyed, `jinshui restore`;
every table, every stream and a submission's outcome read through the gateway are as they were."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import nats
import psutil
from nats.js.errors import NotFoundError

from jinshui.contracts.streams import Naming
from jinshui.kit import natsconn
from jinshui.kit.testing import eventually
from jinshui.kit.tokens import issue_token

from .e2e.settle import caught_up

SCHEMAS = ("registry", "incidents", "risk")


async def jinshui(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jinshui.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


async def tables(database_url: str) -> dict[str, list[str]]:
    """Every row of every table of the service schemas, as sorted JSON texts."""
    conn = await asyncpg.connect(database_url)
    try:
        names = await conn.fetch(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname = ANY($1::text[]) ORDER BY 1, 2",
            list(SCHEMAS),
        )
        out = {}
        for n in names:
            rows = await conn.fetch(f'SELECT to_jsonb(t)::text AS row FROM "{n[0]}"."{n[1]}" t')
            out[f"{n[0]}.{n[1]}"] = sorted(r["row"] for r in rows)
        return out
    finally:
        await conn.close()


async def streams(js, naming: Naming) -> dict[str, dict]:
    """Each of the test's streams: its state and every message (subject, headers, payload) by sequence."""
    out = {}
    for info in await natsconn.all_streams(js):  # the session's NATS holds more than one page
        name = info.config.name
        if not (name.startswith(naming.prefix.upper() + "_") or name.startswith(f"KV_{naming.prefix}_")):
            continue
        messages = {}
        seq = info.state.first_seq
        while info.state.messages and seq <= info.state.last_seq:
            try:
                m = await js.get_msg(name, seq=seq)
                messages[seq] = (m.subject, m.headers, m.data)
            except NotFoundError:
                pass
            seq += 1
        out[name] = {
            "messages": info.state.messages,
            "first_seq": info.state.first_seq,
            "last_seq": info.state.last_seq,
            "content": messages,
        }
    return out


async def test_backup_destroy_restore_gives_back_every_row_message_and_outcome(
    stack, servers, service_env, database_url, stream_prefix, tmp_path: Path
):
    home = service_env["JINSHUI_HOME"]
    s = await stack()
    admin = {"Authorization": f"Bearer {issue_token(home=home, role='community_admin')}"}
    worker = {"Authorization": f"Bearer {issue_token(home=home, role='grid_worker', sub='gw-1')}"}
    codes = [f"BK{i:03d}" for i in range(12)]
    async with httpx.AsyncClient(base_url=s.url("gateway"), timeout=30) as gw:
        for i, code in enumerate(codes):
            body = {"code": code, "address": f"金水小区2-{i % 4 + 1}-{i:03d}", "grid": "G01", "beat": "B1"}
            r = await gw.post("/v1/households", json=body, headers=admin)
            assert r.status_code == 201, r.text
        sids = []
        for i in range(0, len(codes), 4):
            visits = [
                {"household_code": c, "visited_at": datetime.now(UTC).isoformat(), "concerns": ["urgent"]}
                for c in codes[i : i + 4]
            ]
            r = await gw.post("/v1/visits", json={"visits": visits}, headers=worker)
            assert r.status_code == 202, r.text
            sids.append(r.json()["submission_id"])

        async def settled(sid: str):
            state = (await gw.get(f"/v1/submissions/{sid}", headers=worker)).json()
            return state if state["status"] == "applied" else None

        outcome = {sid: await eventually(lambda sid=sid: settled(sid), what="applied") for sid in sids}

    nc = await nats.connect(servers.nats_url)
    js = nc.jetstream(timeout=10)
    naming = Naming(stream_prefix)
    try:
        risk = f"{stream_prefix.upper()}_RISK"
        await eventually(lambda: _alerts(js, risk, len(codes)), what="an alert per visited household")
        # Nothing in flight when they stop (every outbox published, every consumer through its stream): else the
        # platform brought back below would finish that work, and "adds nothing" would not hold.
        await caught_up(s)
        # The services stop, so that what is compared stands still; a backup could be taken while they run.
        for started in [s]:
            await started.stop()
        # Holes: the first intake message and the last dead letters deleted (as a replay deletes them).
        intake, dlq = f"{stream_prefix.upper()}_INTAKE", f"{stream_prefix.upper()}_DLQ"
        await js.delete_msg(intake, (await js.stream_info(intake)).state.first_seq)
        # Two stored messages with one Nats-Msg-Id (published further apart than the duplicate window).
        config = (await js.stream_info(dlq)).config
        await js.update_stream(config.evolve(duplicate_window=0.1))
        same = {"Nats-Msg-Id": "drill-same-id"}
        await js.publish(naming.subject("dlq.drill-twice"), b"1", headers=same)

        async def stored_again():
            return not (await js.publish(naming.subject("dlq.drill-twice"), b"2", headers=same)).duplicate

        await eventually(stored_again, what="the same id stored again after the window")
        await js.update_stream(config)
        dead = [await js.publish(naming.subject(f"dlq.drill-{i}"), b"{}") for i in range(3)]
        for ack in dead[1:]:
            await js.delete_msg(dlq, ack.seq)
        before_tables, before_streams = await tables(database_url), await streams(js, naming)
        assert before_streams[intake]["first_seq"] == 2 and before_streams[dlq]["messages"] == 3
        assert before_streams[dlq]["last_seq"] == dead[-1].seq
        assert sum(len(rows) for rows in before_tables.values()) > 50
        assert len(before_streams) >= 7 and all(v["messages"] for k, v in before_streams.items() if "RISK" in k)

        env = {**os.environ, "NATS_URL": servers.nats_url, "DATABASE_URL": database_url}
        env.update(JINSHUI_STREAM_PREFIX=stream_prefix, JINSHUI_HOME=str(tmp_path / "ops-home"))
        rc, out, err = await jinshui(env, "backup", str(tmp_path / "bk"))
        assert rc == 0, err
        assert "tables" in out and "streams" in out
        manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
        assert manifest["postgres"]["schemas"] == sorted(SCHEMAS)

        # Disaster: the schemas and streams are gone.
        conn = await asyncpg.connect(database_url)
        for schema in SCHEMAS:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        for name in before_streams:
            await js.delete_stream(name)
        # A restore while someone is still connected to the database is refused, and changes nothing.
        rc, out, err = await jinshui(env, "restore", str(tmp_path / "bk"))
        assert rc == 1 and "stop the services first" in err
        assert await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = 'registry'") == 0
        await conn.close()

        rc, out, err = await jinshui(env, "restore", str(tmp_path / "bk"))
        assert rc == 0, err + out
        assert "every count matches" in out

        after_tables, after_streams = await tables(database_url), await streams(js, naming)
        assert after_tables == before_tables
        assert {k: v["messages"] for k, v in after_streams.items()} == {
            k: v["messages"] for k, v in before_streams.items()
        }
        for name, before in before_streams.items():
            after = after_streams[name]
            assert (after["first_seq"], after["last_seq"]) == (before["first_seq"], before["last_seq"]), name
            assert after["content"] == before["content"], name
    finally:
        await nc.close()

    # The platform comes back on the restored data: the gateway still knows each submission's outcome, and
    # the consumers, reading their streams again from the start, add nothing (the inbox has it all).
    s2 = await stack()
    async with httpx.AsyncClient(base_url=s2.url("gateway"), timeout=30) as gw:
        for sid, state in outcome.items():
            r = await gw.get(f"/v1/submissions/{sid}", headers=worker)
            assert r.status_code == 200 and r.json() == state
    nc = await nats.connect(servers.nats_url)
    js = nc.jetstream(timeout=10)
    try:
        await eventually(lambda: _caught_up(js, list(before_streams)), timeout=30, what="consumers caught up")
        again = {k: v["messages"] for k, v in (await streams(js, naming)).items() if not k.startswith("KV_")}
        assert again == {k: v["messages"] for k, v in before_streams.items() if not k.startswith("KV_")}
        assert await tables(database_url) == before_tables
    finally:
        await nc.close()


async def _caught_up(js, names: list[str]) -> bool:
    durables = 0
    for name in names:
        for c in await js.consumers_info(name):
            if c.config.durable_name:
                durables += 1
                if c.num_pending or c.num_ack_pending:
                    return False
    return durables > 0


async def _alerts(js, stream: str, n: int) -> bool:
    info = await js.stream_info(stream)
    return info.state.messages >= n


async def test_with_nothing_running_the_home_servers_run_for_the_backup_and_restore_refuses_a_running_up(tmp_path):
    home = tmp_path / "home"
    (home / "nats").mkdir(parents=True)
    (home / "pg").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL", "JINSHUI_STREAM_PREFIX")}
    rc, _, err = await jinshui(env, "backup", str(tmp_path / "bk"), "--home", str(home))
    assert rc == 0, err
    assert json.loads((tmp_path / "bk" / "manifest.json").read_text())["streams"] == {}
    left = [p for p in psutil.process_iter(["cmdline"]) if str(home) in " ".join(p.info["cmdline"] or [])]
    assert left == [], "the servers started for the backup are stopped after it"

    (home / "run.json").write_text(json.dumps({"services": {}, "nats": {}, "postgres": {}}))
    rc, _, err = await jinshui(env, "restore", str(tmp_path / "bk"), "--home", str(home))
    assert rc == 1 and "jinshui up is running" in err
