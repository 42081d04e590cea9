"""`jinshui dlq`: a message a consumer refused is listed and shown with its reason and original headers; after the
fix, replay applies it exactly once, while the consumers that had applied it already skip it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid

import pytest_asyncio

from jinshui.contracts import streams
from jinshui.contracts.envelope import encode, new_event
from jinshui.contracts.streams import Naming
from jinshui.kit import db, natsconn
from jinshui.kit.app import KIT_MIGRATIONS
from jinshui.kit.consumer import ConsumerSpec, InboxConsumer, Permanent
from jinshui.kit.settings import ServiceSettings
from jinshui.kit.testing import eventually

SCHEMA = "dlqtest"
TYPE = "org.jinshui.registry.household.registered.v1"
SUBJECT = "registry.household.registered"


@pytest_asyncio.fixture
async def env(servers, database_url, stream_prefix, tmp_path):
    pool = await db.create_pool(database_url, schema=SCHEMA)
    await db.migrate(pool, schema=SCHEMA, sources=[("kit", KIT_MIGRATIONS)])
    await pool.execute("CREATE TABLE effects (consumer text NOT NULL, event_id text NOT NULL)")
    nc = await natsconn.connect(ServiceSettings(nats_url=servers.nats_url), name="dlq-test")
    js = nc.jetstream(timeout=5)
    naming = Naming(stream_prefix)
    await natsconn.ensure_streams(js, naming)
    tasks: list[asyncio.Task] = []
    cli_env = {
        **os.environ,
        "NATS_URL": servers.nats_url,
        "JINSHUI_STREAM_PREFIX": stream_prefix,
        "JINSHUI_HOME": str(tmp_path / "home"),
    }
    yield type("Env", (), {"pool": pool, "js": js, "naming": naming, "tasks": tasks, "cli_env": cli_env})
    for t in tasks:
        t.cancel()
        with contextlib.suppress(BaseException):
            await t
    await nc.close()
    await pool.close()


def start_consumer(env, durable: str, handler) -> None:
    async def recording(conn, ev):
        await handler(ev)
        await conn.execute("INSERT INTO effects (consumer, event_id) VALUES ($1, $2)", durable, ev.id)

    spec = ConsumerSpec(
        durable=durable, stream=streams.REGISTRY, subjects=[f"{SUBJECT}.>"], handler=recording, batch=20
    )
    consumer = InboxConsumer(pool=env.pool, js=env.js, naming=env.naming, spec=spec)
    env.tasks.append(asyncio.create_task(consumer.run()))


async def jinshui(env, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jinshui.cli",
        *args,
        env=env.cli_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"jinshui {' '.join(args)}: {err.decode()}"
    return out.decode()


async def dead_letters(env, *args: str) -> list[dict]:
    return json.loads(await jinshui(env, "dlq", "list", "--json", *args))


async def effects(env, consumer: str) -> list[str]:
    rows = await env.pool.fetch("SELECT event_id FROM effects WHERE consumer = $1 ORDER BY event_id", consumer)
    return [r["event_id"] for r in rows]


async def test_a_refused_message_is_replayed_after_the_fix_and_applied_exactly_once(env):
    fixed = asyncio.Event()
    poisoned = new_event(type=TYPE, source="/test", data={"code": "H-POISON", "address": "金水小区1-1-101"})
    other = new_event(type=TYPE, source="/test", data={"code": "H-OTHER", "address": "金水小区1-1-102"})

    async def picky(ev):  # refuses H-POISON until the fix is deployed
        if ev.data["code"] == "H-POISON" and not fixed.is_set():
            raise Permanent("address has no grid (bug #12)")

    async def bystander(ev):  # applies H-POISON; refuses H-OTHER, which nobody fixes
        if ev.data["code"] == "H-OTHER":
            raise Permanent("other consumer's trouble")

    start_consumer(env, "picky", picky)
    start_consumer(env, "bystander", bystander)
    original_id = str(uuid.uuid4())
    await env.js.publish(
        env.naming.subject(f"{SUBJECT}.H-POISON"),
        encode(poisoned),
        headers={"Nats-Msg-Id": original_id, "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
    )
    await env.js.publish(env.naming.subject(f"{SUBJECT}.H-OTHER"), encode(other))

    listed = await eventually(lambda: _at_least(dead_letters(env), 2), what="two dead letters", timeout=30)
    mine = next(d for d in listed if d["consumer"] == "picky")
    assert mine["subject"] == f"{SUBJECT}.H-POISON"
    assert mine["reason"] == "address has no grid (bug #12)"
    assert mine["deliveries"] == 1 and mine["event_id"] == poisoned.id and mine["msg_id"] == original_id
    assert mine["source"]["stream"] == env.naming.stream(streams.REGISTRY)
    assert await effects(env, "bystander") == [poisoned.id]
    assert await effects(env, "picky") == [other.id]

    table = await jinshui(env, "dlq", "list")
    assert "picky" in table and "address has no grid" in table and "SEQ" in table.splitlines()[0]
    shown = json.loads(await jinshui(env, "dlq", "show", str(mine["seq"]), "--json"))
    assert shown["headers"]["traceparent"].startswith("00-111")
    assert not any(k.startswith("Jinshui-Dlq") for k in shown["headers"])
    assert shown["payload"]["id"] == poisoned.id and shown["payload"]["data"]["code"] == "H-POISON"

    # The fix is deployed; replaying within the duplicate window of the original publish still delivers it.
    fixed.set()
    out = await jinshui(env, "dlq", "replay", "--all", "--consumer", "picky")
    assert "1 dead letter(s) replayed" in out
    await eventually(lambda: _has(effects(env, "picky"), poisoned.id), what="the replayed message applied")
    assert await dead_letters(env, "--consumer", "picky") == []
    left = await dead_letters(env)
    assert [d["consumer"] for d in left] == ["bystander"]

    # The bystander had applied it before: it skips the replay. Nothing is applied twice.
    last = await env.js.get_last_msg(env.naming.stream(streams.REGISTRY), env.naming.subject(f"{SUBJECT}.H-POISON"))
    assert last.headers["Nats-Msg-Id"] == f"{original_id}~replay-{mine['seq']}"
    assert await _bystander_caught_up(env)
    assert sorted(await effects(env, "picky")) == sorted([poisoned.id, other.id])
    assert await effects(env, "bystander") == [poisoned.id]


async def _bystander_caught_up(env) -> bool:
    async def done():
        info = await env.js.consumer_info(env.naming.stream(streams.REGISTRY), "bystander")
        return info.num_pending == 0 and info.num_ack_pending == 0

    return await eventually(done, what="the bystander consumer to settle the replay")


async def _has(coro, item) -> bool:
    return item in await coro


async def _at_least(coro, n: int):
    items = await coro
    return items if len(items) >= n else None
