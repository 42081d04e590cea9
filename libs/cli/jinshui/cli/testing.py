"""pytest plugin: real NATS and PostgreSQL per session, a database and stream prefix per test, services as
processes.

Each server comes from NATS_URL / DATABASE_URL when set, else from Testcontainers when a Docker engine answers,
else embedded. JINSHUI_TEST_SERVERS=external|docker|embedded insists on one kind (docker and embedded ignore the
URLs).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
import pytest_asyncio

from jinshui.cli import natsauth
from jinshui.cli._proc import process_alive
from jinshui.cli.embedded import NatsServer, PgServer, database_dsn, start_nats, start_postgres, stop_stale_servers
from jinshui.cli.stack import SERVICES, Stack

TMP_PREFIX = "jinshui-test-"
STALE_AFTER_SECONDS = 3600
# Durability settings off: tests kill processes, never the machine.
TEST_PG_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
}
# The embedded NATS runs with the services' users (natsauth) and these fixed development passwords; tests and
# their helpers connect as the admin, whose credentials `Servers.nats_url` carries.
TEST_NATS_PASSWORDS = {user: f"{user}-test" for user in (*SERVICES, natsauth.ADMIN_USER)}

__all__ = ["Servers", "StackFactory"]


class Servers:
    """The session's NATS and PostgreSQL; NATS can be stopped and started again when embedded."""

    def __init__(
        self,
        *,
        kind: str,
        nats_url: str | None = None,
        admin_database_url: str,
        nats: NatsServer | None = None,
        pg: PgServer | None = None,
        root: Path | None = None,
        containers: Sequence[Any] = (),
    ) -> None:
        self.kind = kind
        self._nats_url = nats_url
        self.admin_database_url = admin_database_url
        self.nats = nats
        self.pg = pg
        self.root = root
        self._containers = list(containers)
        # Each service's NATS (user, password) when the server has users (the embedded one); else empty.
        self.nats_users: dict[str, tuple[str, str]] = {}

    def __repr__(self) -> str:
        return f"Servers(kind={self.kind!r}, nats_url={self.nats_url!r})"

    @property
    def nats_url(self) -> str:
        if self.nats is not None:
            if self.nats_users:
                admin = natsauth.ADMIN_USER
                return self.nats.url.replace("nats://", f"nats://{admin}:{TEST_NATS_PASSWORDS[admin]}@", 1)
            return self.nats.url
        assert self._nats_url is not None
        return self._nats_url

    def _embedded_nats(self) -> NatsServer:
        if self.nats is None:
            raise RuntimeError(
                f"NATS at {self.nats_url} is not embedded in this session: only the embedded server can be "
                "stopped and started by tests (unset NATS_URL, or set JINSHUI_TEST_SERVERS=embedded)"
            )
        return self.nats

    def stop_nats(self, timeout: float = 10) -> None:
        """Stop NATS (SIGTERM); its port and data are kept for start_nats()."""
        self._embedded_nats().stop(timeout)

    def kill_nats(self) -> None:
        """SIGKILL NATS, as a crash would."""
        self._embedded_nats().kill()

    def start_nats(self, timeout: float = 20) -> None:
        """Start NATS again on the same port and data; returns once JetStream is healthy."""
        self._embedded_nats().start(timeout)

    def restart_nats(self, timeout: float = 20) -> None:
        """Stop NATS, then start it again on the same port and data."""
        self._embedded_nats().restart(timeout)

    def close(self) -> None:
        """Stop what this session started and remove its data."""
        if self.nats is not None:
            self.nats.stop()
        if self.pg is not None:
            self.pg.stop()
        for container in self._containers:
            with contextlib.suppress(Exception):
                container.stop()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


def _docker_answers(timeout: float = 2.0) -> bool:
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _start_containers(servers: Servers, *, nats: bool, pg: bool) -> None:
    from testcontainers.community.nats import NatsContainer
    from testcontainers.community.postgres import PostgresContainer

    if nats:
        container = NatsContainer("nats:2", jetstream=True).start()
        servers._containers.append(container)
        servers._nats_url = container.nats_uri()
    if pg:
        container = PostgresContainer("postgres:18", driver=None).start()
        servers._containers.append(container)
        servers.admin_database_url = container.get_connection_url()


def _owner_alive(root: Path) -> bool | None:
    """Whether the session that made `root` still runs; None when it did not say who it was."""
    try:
        owner = json.loads((root / "owner.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    pid, created = owner.get("pid"), owner.get("created")
    if not process_alive(pid):
        return False
    try:
        return psutil.Process(pid).create_time() == created
    except psutil.Error:
        return False


def remove_stale_dirs(base: Path | None = None, *, keep: Path | None = None) -> list[Path]:
    """Remove data dirs of test sessions that died (stopping servers still running there); the removed."""
    base = Path(base or tempfile.gettempdir())
    removed = []
    for root in base.glob(TMP_PREFIX + "*"):
        if not root.is_dir() or root == keep:
            continue
        alive = _owner_alive(root)
        if alive or (alive is None and time.time() - root.stat().st_mtime < STALE_AFTER_SECONDS):
            continue
        stop_stale_servers(root)
        shutil.rmtree(root, ignore_errors=True)
        removed.append(root)
    return removed


def _start_embedded(servers: Servers, *, nats: bool, pg: bool) -> None:
    remove_stale_dirs()
    root = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
    me = psutil.Process()
    (root / "owner.json").write_text(json.dumps({"pid": me.pid, "created": me.create_time()}))
    root.chmod(0o755)
    servers.root = root
    if nats:
        authorization = natsauth.render(
            TEST_NATS_PASSWORDS,
            prefix=natsauth.ANY_PREFIX,
            admin_password=TEST_NATS_PASSWORDS[natsauth.ADMIN_USER],
        )
        servers.nats = start_nats(root / "nats", config_extra=authorization)
        servers.nats_users = natsauth.service_users(TEST_NATS_PASSWORDS)
    if pg:
        servers.pg = start_postgres(root / "pg", settings=TEST_PG_SETTINGS)
        servers.admin_database_url = servers.pg.url


def make_servers() -> Servers:
    """The servers for a test session, by the rules in this module's docstring."""
    wanted = os.environ.get("JINSHUI_TEST_SERVERS", "")
    if wanted not in ("", "external", "docker", "embedded"):
        raise RuntimeError(f"JINSHUI_TEST_SERVERS={wanted!r}: expected external, docker or embedded")
    nats_url = os.environ.get("NATS_URL") if wanted in ("", "external") else None
    database_url = os.environ.get("DATABASE_URL") if wanted in ("", "external") else None
    if wanted == "external" and not (nats_url and database_url):
        raise RuntimeError("JINSHUI_TEST_SERVERS=external needs NATS_URL and DATABASE_URL")
    if nats_url and database_url:
        return Servers(kind="external", nats_url=nats_url, admin_database_url=database_url)
    kind = "docker" if wanted == "docker" or (not wanted and _docker_answers()) else "embedded"
    servers = Servers(kind=kind, nats_url=nats_url, admin_database_url=database_url or "")
    start = _start_containers if kind == "docker" else _start_embedded
    try:
        start(servers, nats=not nats_url, pg=not database_url)
    except BaseException:
        servers.close()
        raise
    return servers


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    """NATS and PostgreSQL for the whole session: `.nats_url`, `.admin_database_url`."""
    made = make_servers()
    try:
        yield made
    finally:
        made.close()


@pytest_asyncio.fixture(loop_scope="session")
async def database_url(servers: Servers) -> AsyncIterator[str]:
    """A fresh, empty database for this test (dropped afterwards); its DSN."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(servers.admin_database_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await conn.close()
    try:
        yield database_dsn(servers.admin_database_url, name)
    finally:
        conn = await asyncpg.connect(servers.admin_database_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture
def stream_prefix() -> str:
    """A stream/subject prefix of this test's own, so that tests can share one NATS."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def service_env(servers: Servers, database_url: str, stream_prefix: str, tmp_path: Path) -> dict[str, str]:
    """The environment a service of this test runs with."""
    home = tmp_path / "jinshui-home"
    home.mkdir(exist_ok=True)
    env = dict(os.environ)
    env.update(
        NATS_URL=servers.nats_url,
        DATABASE_URL=database_url,
        JINSHUI_STREAM_PREFIX=stream_prefix,
        JINSHUI_HOME=str(home),
        JINSHUI_ENV="test",
        JINSHUI_CLOCK="adjustable",
        JINSHUI_CLOCK_FILE=str(tmp_path / "clock"),
        LOG_LEVEL="INFO",
        OTEL_BSP_SCHEDULE_DELAY="200",
        # Tests set up whole communities in a second; the rate limits have their own test (test_door).
        RATE_LIMIT_DEFAULT="[0, 0]",
    )
    return env


StackFactory = Callable[..., Awaitable[Stack]]
_STACKS = pytest.StashKey[list[Stack]]()


@pytest_asyncio.fixture(loop_scope="session")
async def stack(
    request: pytest.FixtureRequest, servers: Servers, service_env: dict[str, str], tmp_path: Path
) -> AsyncIterator[StackFactory]:
    """`await stack(services=..., env_overrides=..., ports=..., timeout=...)`: a started Stack, stopped later."""
    made: list[Stack] = []
    request.node.stash[_STACKS] = made

    async def factory(
        *,
        services: Sequence[str] = SERVICES,
        env_overrides: Mapping[str, str] | None = None,
        ports: Mapping[str, int] | None = None,
        timeout: float = 60,
    ) -> Stack:
        env = {**service_env, **(env_overrides or {})}
        started = Stack(
            env=env,
            log_dir=tmp_path / "logs" / f"stack{len(made)}",
            services=services,
            ports=ports,
            nats_users=servers.nats_users,
        )
        made.append(started)
        await started.start(timeout)
        return started

    try:
        yield factory
    finally:
        for started in reversed(made):
            await started.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and report.when in ("setup", "call"):
        for i, started in enumerate(item.stash.get(_STACKS, [])):
            for name in started.services:
                tail = started.log_tail(name, 80)
                if tail:
                    report.sections.append((f"stack{i} {name} log (last lines)", tail))
    return report
