"""Kit pieces that need no servers, and migrations against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from jinshui.kit import db
from jinshui.kit.clock import AdjustableClock, WallClock, advance, clock_from_settings
from jinshui.kit.problems import field_path
from jinshui.kit.settings import ServiceSettings


def test_the_adjustable_clock_moves_when_a_test_advances_it(tmp_path):
    path = tmp_path / "clock"
    clock = AdjustableClock(path)
    before = clock.now()
    advance(path, 7 * 24 * 3600)
    moved = clock.now() - before
    assert timedelta(days=7) <= moved < timedelta(days=7, seconds=5)
    advance(path, 23 * 24 * 3600)
    assert clock.now() - before >= timedelta(days=30)


def test_settings_choose_the_clock(tmp_path):
    adjustable = ServiceSettings(jinshui_clock="adjustable", jinshui_clock_file=tmp_path / "c")
    assert isinstance(clock_from_settings(adjustable), AdjustableClock)
    assert isinstance(clock_from_settings(ServiceSettings()), WallClock)
    assert abs(WallClock().now() - datetime.now(UTC)) < timedelta(seconds=1)


def test_production_refuses_development_defaults():
    with pytest.raises(ValidationError, match="DATABASE_URL is the development default"):
        ServiceSettings(jinshui_env="production")
    with pytest.raises(ValidationError, match="JINSHUI_CLOCK must be 'wall'"):
        ServiceSettings(jinshui_env="production", database_url="postgresql://db/x", jinshui_clock="adjustable")
    ok = ServiceSettings(jinshui_env="production", database_url="postgresql://db/x")
    assert ok.is_production


def test_settings_read_the_server_list_from_the_environment(monkeypatch):
    monkeypatch.setenv("NATS_URL", "nats://a:4222, nats://b:4222,nats://c:4222")
    assert ServiceSettings().nats_servers == ["nats://a:4222", "nats://b:4222", "nats://c:4222"]


def test_field_paths_read_like_json_paths():
    assert field_path(("body", "visits", 0, "household_code")) == "body.visits[0].household_code"
    assert field_path(("query", "limit")) == "query.limit"


async def test_replicas_starting_together_apply_each_migration_once(database_url, tmp_path):
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (id int); INSERT INTO a VALUES (1);")
    (tmp_path / "0002_b.sql").write_text("INSERT INTO a VALUES (2);")
    pools = [await db.create_pool(database_url, schema="migr", min_size=1, max_size=2) for _ in range(3)]
    try:
        results = await asyncio.gather(*(db.migrate(p, schema="migr", sources=[("svc", tmp_path)]) for p in pools))
        assert sorted(len(r) for r in results) == [0, 0, 2]
        assert await pools[0].fetchval("SELECT array_agg(id ORDER BY id) FROM a") == [1, 2]
        (tmp_path / "0003_c.sql").write_text("INSERT INTO a VALUES (3);")
        assert await db.migrate(pools[1], schema="migr", sources=[("svc", tmp_path)]) == ["svc/0003_c.sql"]
    finally:
        for p in pools:
            await p.close()


def test_schema_names_are_checked():
    with pytest.raises(ValueError, match="not a safe SQL identifier"):
        db._check_ident("registry; DROP TABLE x")
