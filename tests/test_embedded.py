"""The embedded servers and the test plugin's servers, for real: nats-server and PostgreSQL processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import nats
import psutil
import pytest

from jinshui.cli._proc import free_port, process_alive
from jinshui.cli.embedded import database_dsn, ensure_database, start_nats, start_postgres
from jinshui.cli.testing import TMP_PREFIX, Servers, remove_stale_dirs


async def _js_connect(url: str):
    nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    return nc, nc.jetstream()


def _wait_until(predicate, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def listener():
    """A TCP listener holding a port, as another server would."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.settimeout(5)
    yield sock
    sock.close()


# ---------------------------------------------------------------------------------------------- NATS


async def test_nats_takes_a_free_port_when_the_requested_one_is_taken(tmp_path: Path, listener) -> None:
    taken = listener.getsockname()[1]
    server = start_nats(tmp_path / "nats", port=taken)
    try:
        assert server.port != taken
        assert server.url == f"nats://127.0.0.1:{server.port}"
        nc, js = await _js_connect(server.url)
        info = await js.account_info()
        assert info.limits is not None
        await nc.close()
        # The other server still owns its port.
        with socket.create_connection(("127.0.0.1", taken), timeout=5):
            conn, _ = listener.accept()
            conn.close()
    finally:
        pid = server.pid
        server.stop()
    assert not process_alive(pid)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


async def test_nats_uses_the_requested_port_when_free_and_writes_its_config(tmp_path: Path) -> None:
    port = free_port()
    server = start_nats(tmp_path / "nats", port=port)
    try:
        assert server.port == port
        conf = server.conf_path.read_text()
        assert "sync_interval: always" in conf
        assert "max_payload: 8MB" in conf
        nc = await nats.connect(server.url, allow_reconnect=False)
        assert nc.max_payload == 8 * 1024 * 1024
        await nc.close()
    finally:
        server.stop()


async def test_nats_keeps_streams_across_kill_and_restart(tmp_path: Path) -> None:
    server = start_nats(tmp_path / "nats")
    url = server.url
    try:
        nc, js = await _js_connect(url)
        await js.add_stream(name="KEEP", subjects=["keep.>"])
        for i in range(3):
            await js.publish("keep.x", f"m{i}".encode())
        await nc.close()

        old_pid = server.pid
        server.kill()
        assert not process_alive(old_pid)
        server.start()
        assert server.url == url
        nc, js = await _js_connect(url)
        assert (await js.stream_info("KEEP")).state.messages == 3
        await nc.close()

        server.restart()
        assert server.url == url
        nc, js = await _js_connect(url)
        assert (await js.get_msg("KEEP", 3)).data == b"m2"
        await nc.close()
    finally:
        server.stop()


async def test_nats_start_stops_a_server_left_running_on_the_same_data(tmp_path: Path) -> None:
    leftover = start_nats(tmp_path / "nats", die_with_parent=False)
    try:
        nc, js = await _js_connect(leftover.url)
        await js.add_stream(name="LEFT", subjects=["left.>"])
        await js.publish("left.x", b"kept")
        await nc.close()

        server = start_nats(tmp_path / "nats")
        try:
            assert _wait_until(lambda: not process_alive(leftover.pid))
            nc, js = await _js_connect(server.url)
            assert (await js.stream_info("LEFT")).state.messages == 1
            await nc.close()
        finally:
            server.stop()
    finally:
        leftover.stop()


def test_nats_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from jinshui.cli.embedded import start_nats;"
        "s = start_nats(Path(sys.argv[1])); print(s.pid, flush=True); sys.stdin.read()"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "nats")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        nats_pid = int(parent.stdout.readline())
        assert process_alive(nats_pid)
        parent.kill()
        parent.wait()
        assert _wait_until(lambda: not process_alive(nats_pid))
    finally:
        parent.kill()
        parent.wait()


# ----------------------------------------------------------------------------------------- PostgreSQL


async def test_postgres_listens_on_tcp_and_keeps_data_across_runs(tmp_path: Path) -> None:
    pg = start_postgres(tmp_path / "pg")
    try:
        assert pg.url.startswith("postgresql://postgres@127.0.0.1:")
        conn = await asyncpg.connect(pg.url)
        assert await conn.fetchval("select 1") == 1
        await conn.execute("create table kept (v text); insert into kept values ('金水')")
        await conn.close()
    finally:
        pid = pg.pid
        pg.stop()
    assert not process_alive(pid)
    with pytest.raises(OSError):
        await asyncpg.connect(pg.url, timeout=3)

    again = start_postgres(tmp_path / "pg")
    try:
        assert again.port == pg.port  # the port used last time is preferred
        conn = await asyncpg.connect(again.url)
        assert await conn.fetchval("select v from kept") == "金水"
        await conn.close()
    finally:
        again.stop()


async def test_postgres_takes_over_from_a_server_left_running(tmp_path: Path) -> None:
    leftover = start_postgres(tmp_path / "pg")
    try:
        conn = await asyncpg.connect(leftover.url)
        await conn.execute("create table kept (v int); insert into kept values (7)")
        await conn.close()

        pg = start_postgres(tmp_path / "pg")
        try:
            assert not process_alive(leftover.pid)
            assert pg.pid != leftover.pid
            conn = await asyncpg.connect(pg.url)
            assert await conn.fetchval("select v from kept") == 7
            await conn.close()
        finally:
            pg.stop()
    finally:
        leftover.stop()


async def test_postgres_recovers_after_its_server_was_killed(tmp_path: Path) -> None:
    pg = start_postgres(tmp_path / "pg")
    try:
        conn = await asyncpg.connect(pg.url)
        await conn.execute("create table kept (v int); insert into kept values (1)")
        await conn.close()
        os.kill(pg.pid, signal.SIGKILL)
        assert _wait_until(lambda: not process_alive(pg.pid))
    finally:
        pg.stop()
    assert (tmp_path / "pg" / "data" / "postmaster.pid").exists()

    again = start_postgres(tmp_path / "pg")
    try:
        conn = await asyncpg.connect(again.url)
        assert await conn.fetchval("select v from kept") == 1
        await conn.close()
    finally:
        again.stop()


def test_database_dsn_keeps_socket_and_parameters() -> None:
    assert (
        database_dsn("postgresql://postgres:@/postgres?host=/run/pg", "jinshui")
        == "postgresql://postgres:@/jinshui?host=/run/pg"
    )
    assert (
        database_dsn("postgresql://u:p@db:5433/postgres?sslmode=require", "t_1")
        == "postgresql://u:p@db:5433/t_1?sslmode=require"
    )


async def test_ensure_database_is_idempotent(servers: Servers) -> None:
    name = f"e_{uuid.uuid4().hex[:12]}"
    first = await ensure_database(servers.admin_database_url, name)
    try:
        second = await ensure_database(servers.admin_database_url, name)
        assert first == second == database_dsn(servers.admin_database_url, name)
        conn = await asyncpg.connect(first)
        assert await conn.fetchval("select current_database()") == name
        await conn.close()
    finally:
        admin = await asyncpg.connect(servers.admin_database_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# -------------------------------------------------------------------------------------- the plugin


async def test_database_url_is_a_fresh_database(database_url: str, servers: Servers) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        name = await conn.fetchval("select current_database()")
        assert name.startswith("t_")
        assert await conn.fetchval("select count(*) from pg_tables where schemaname = 'public'") == 0
    finally:
        await conn.close()
    assert database_url == database_dsn(servers.admin_database_url, name)


def test_service_env(service_env: dict[str, str], servers: Servers, stream_prefix: str) -> None:
    assert service_env["NATS_URL"] == servers.nats_url
    assert service_env["JINSHUI_STREAM_PREFIX"] == stream_prefix
    assert service_env["JINSHUI_ENV"] == "test"
    assert service_env["JINSHUI_CLOCK"] == "adjustable"
    assert Path(service_env["JINSHUI_HOME"]).is_dir()
    assert service_env["DATABASE_URL"] != servers.admin_database_url
    assert service_env["PATH"] == os.environ["PATH"]


async def test_servers_can_take_nats_down_and_bring_it_back(servers: Servers) -> None:
    if servers.nats is None:
        with pytest.raises(RuntimeError, match="only the embedded server"):
            servers.stop_nats()
        return
    url = servers.nats_url
    stream = f"S{uuid.uuid4().hex[:8].upper()}"
    nc, js = await _js_connect(url)
    await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
    await js.publish(f"{stream.lower()}.x", b"before")
    await nc.close()

    servers.stop_nats()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", servers.nats.port), timeout=2).close()
    servers.start_nats()
    assert servers.nats_url == url
    nc, js = await _js_connect(url)
    assert (await js.get_msg(stream, 1)).data == b"before"
    await nc.close()

    servers.restart_nats()
    nc, js = await _js_connect(url)
    assert (await js.stream_info(stream)).state.messages == 1
    await js.delete_stream(stream)
    await nc.close()


def test_remove_stale_dirs_removes_dead_sessions_and_their_servers(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_created = psutil.Process(gone.pid).create_time()
    gone.wait()
    me = psutil.Process()

    dead = tmp_path / f"{TMP_PREFIX}dead"
    (dead / "nats").mkdir(parents=True)
    (dead / "owner.json").write_text(json.dumps({"pid": gone.pid, "created": gone_created}))
    alive = tmp_path / f"{TMP_PREFIX}alive"
    alive.mkdir()
    (alive / "owner.json").write_text(json.dumps({"pid": me.pid, "created": me.create_time()}))
    old = tmp_path / f"{TMP_PREFIX}old"
    old.mkdir()
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    fresh = tmp_path / f"{TMP_PREFIX}fresh"
    fresh.mkdir()
    other = tmp_path / "someone-else"
    other.mkdir()
    os.utime(other, (two_hours_ago, two_hours_ago))

    orphan = start_nats(dead / "nats", die_with_parent=False)
    try:
        removed = remove_stale_dirs(tmp_path)
        assert sorted(removed) == sorted([dead, old])
        assert not dead.exists() and not old.exists()
        assert alive.exists() and fresh.exists() and other.exists()
        assert _wait_until(lambda: not process_alive(orphan.pid))
    finally:
        orphan.stop()
