"""Where the operations commands (`jinshui dlq`, `backup`, `restore`) find NATS and PostgreSQL.

In order: the command's options, then NATS_URL / DATABASE_URL, then the run.json of a `jinshui up` running
from --home, then (when asked for) the embedded servers of --home, started for the length of the command.
NATS credentials: those in the URL, else NATS_USER / NATS_PASSWORD, else the admin user of --home.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client as NATS

from jinshui.cli import natsauth
from jinshui.contracts.streams import Naming

RUN_FILE = "run.json"
NATS_PASSWORDS_FILE = "nats-users.json"
DATABASE_NAME = "jinshui"

__all__ = ["Endpoints", "OpsError", "add_arguments", "connect_nats", "endpoints", "naming"]


class OpsError(RuntimeError):
    """The command cannot go on; the message says why and what to do."""


@dataclass
class Endpoints:
    nats_url: str | None
    database_url: str | None
    home: Path
    # Whether a `jinshui up` is running from home (its services are then connected).
    running: bool


def add_arguments(p: argparse.ArgumentParser, default_home: str, *, database: bool = False) -> None:
    p.add_argument("--home", default=default_home, help="the home of `jinshui up` (default: %(default)s)")
    p.add_argument("--nats-url", default=None, help="NATS (default: NATS_URL, else run.json under --home)")
    if database:
        p.add_argument(
            "--database-url", default=None, help="PostgreSQL (default: DATABASE_URL, else run.json under --home)"
        )
    p.add_argument(
        "--prefix",
        default=os.environ.get("JINSHUI_STREAM_PREFIX", ""),
        help="deployment prefix of streams and subjects (default: JINSHUI_STREAM_PREFIX)",
    )


def _run_info(home: Path) -> dict[str, Any] | None:
    try:
        return json.loads((home / RUN_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None


def endpoints(args: argparse.Namespace) -> Endpoints:
    """The URLs the command should use (None where nothing says)."""
    home = Path(args.home).resolve()
    info = _run_info(home)
    nats_url = args.nats_url or os.environ.get("NATS_URL") or ((info or {}).get("nats") or {}).get("url")
    database_url = (
        getattr(args, "database_url", None)
        or os.environ.get("DATABASE_URL")
        or ((info or {}).get("postgres") or {}).get("url")
    )
    return Endpoints(nats_url=nats_url, database_url=database_url, home=home, running=info is not None)


def naming(args: argparse.Namespace) -> Naming:
    return Naming(args.prefix or "")


def _credentials(url: str, home: Path) -> dict[str, str]:
    if urlsplit(url.split(",")[0]).username:
        return {}
    if os.environ.get("NATS_USER"):
        return {"user": os.environ["NATS_USER"], "password": os.environ.get("NATS_PASSWORD", "")}
    try:
        passwords = json.loads((home / NATS_PASSWORDS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    if admin := passwords.get(natsauth.ADMIN_USER):
        return {"user": natsauth.ADMIN_USER, "password": admin}
    return {}


async def connect_nats(url: str, *, home: Path) -> NATS:
    """A connection for a short command: a few connect attempts, no reconnect loop."""
    servers = [s.strip() for s in url.split(",") if s.strip()]
    try:
        return await nats.connect(
            servers=servers,
            name="jinshui-cli",
            connect_timeout=3,
            max_reconnect_attempts=2,
            allow_reconnect=False,
            pending_size=64 * 1024 * 1024,
            **_credentials(url, home),
        )
    except Exception as e:
        raise OpsError(f"cannot connect to NATS at {servers[0]}: {e!r}") from e


@contextlib.asynccontextmanager
async def embedded_if_stopped(ep: Endpoints, *, prefix: str) -> AsyncIterator[Endpoints]:
    """The endpoints as found; when none are and --home holds embedded data, its servers, started meanwhile.

    Holds the home's lock while it runs them, so that `jinshui up` cannot start on the same data meanwhile.
    """
    if ep.nats_url and ep.database_url:
        yield ep
        return
    if not ((ep.home / "nats").is_dir() and (ep.home / "pg").is_dir()):
        raise OpsError(
            f"no NATS or PostgreSQL to talk to: nothing runs from {ep.home} and NATS_URL / DATABASE_URL are unset"
        )
    from jinshui.cli.embedded import ensure_database, start_nats, start_postgres
    from jinshui.cli.main import _lock_home

    lock = _lock_home(ep.home)
    if lock is None:
        raise OpsError(f"jinshui up is starting or stopping from {ep.home}; try again when it is up or stopped")
    nats_server = pg = None
    try:
        passwords = natsauth.load_or_create_passwords(ep.home / NATS_PASSWORDS_FILE)
        authorization = natsauth.render(passwords, prefix=prefix, admin_password=passwords[natsauth.ADMIN_USER])
        nats_server = start_nats(ep.home / "nats", config_extra=authorization)
        pg = start_postgres(ep.home / "pg")
        database_url = await ensure_database(pg.url, DATABASE_NAME)
        yield Endpoints(nats_url=nats_server.url, database_url=database_url, home=ep.home, running=False)
    finally:
        if nats_server is not None:
            nats_server.stop()
        if pg is not None:
            pg.stop()
        lock.close()
