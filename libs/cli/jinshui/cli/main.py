"""`jinshui up | token | status`: the whole platform on one machine, development tokens, health."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil

from jinshui.cli import natsauth
from jinshui.cli._proc import process_alive, signal_group
from jinshui.cli.embedded import EmbeddedError, NatsServer, PgServer, ensure_database, start_nats, start_postgres
from jinshui.cli.stack import DEFAULT_PORTS, SERVICES, Stack, StackError, choose_ports

DEFAULT_HOME = ".jinshui"
DEFAULT_NATS_PORT = 4222
DATABASE_NAME = "jinshui"
RUN_FILE = "run.json"
# The embedded NATS users' passwords (made once, under JINSHUI_HOME).
NATS_PASSWORDS_FILE = "nats-users.json"


def _default_home() -> str:
    return os.environ.get("JINSHUI_HOME", DEFAULT_HOME)


def _say(*parts: object) -> None:
    print(*parts, flush=True)


def _warn(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ up


def _redact(url: str) -> str:
    """`url` without its password (external servers' URLs may carry one)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _clean_previous_run(home: Path) -> None:
    """Stop the services a crashed `up` left behind (their pids are in run.json); servers clean themselves."""
    run_file = home / RUN_FILE
    try:
        previous = json.loads(run_file.read_text())
    except (FileNotFoundError, ValueError):
        return
    for name, entry in (previous.get("services") or {}).items():
        pid, created = entry.get("pid"), entry.get("created")
        # Same pid and same start time: it is that process, not a newcomer that reused the pid.
        if pid and created and _create_time(pid) == created:
            _warn(f"stopping {name} (pid {pid}) left over from a previous run")
            signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            signal_group(pid, signal.SIGKILL)
    run_file.unlink(missing_ok=True)


def _run_info(
    *, home: Path, ready: bool, nats: NatsServer | None, pg: PgServer | None, stack: Stack | None, urls: dict
) -> dict[str, Any]:
    services = {}
    if stack is not None:
        for name in stack.services:
            with contextlib.suppress(KeyError):
                pid = stack.pid(name)
                services[name] = {"url": stack.url(name), "pid": pid, "created": _create_time(pid)}
    return {
        "pid": os.getpid(),
        "home": str(home),
        "ready": ready,
        "services": services,
        "nats": {"url": urls["nats"], "pid": nats.pid if nats and nats.is_running() else None},
        "postgres": {"url": urls["database"], "pid": pg.pid if pg and pg.is_running() else None},
    }


def _banner(stack: Stack, *, home: Path, took: float, nats: str, database: str, embedded: bool) -> str:
    home_arg = "" if home == Path(_default_home()).resolve() else f" --home {home}"
    gateway = stack.url("gateway") if "gateway" in stack.services else None
    lines = [f"Jinshui is up: ready in {took:.1f} s.", ""]
    for name in sorted(stack.services, key=lambda n: n != "gateway"):
        note = "  <- the API: talk to this one" if name == "gateway" else ""
        lines.append(f"  {name:<10} {stack.url(name)}{note}")
    lines += [
        f"  {'nats':<10} {nats}",
        f"  {'postgres':<10} {database}",
        "",
        f"Get a token:   jinshui token --role police{home_arg}",
    ]
    if gateway:
        lines.append(
            f'Try:           curl -H "Authorization: Bearer $(jinshui token --role ops{home_arg})" '
            f"{gateway}/v1/ops/status"
        )
    lines += [
        f"Logs:          {stack.log_dir}/",
        f"Data:          {home}/" + ("" if embedded else " (external NATS/PostgreSQL)"),
        "Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)


def _lock_home(home: Path) -> Any:
    home.mkdir(parents=True, exist_ok=True)
    fd = open(home / ".lock", "w")  # held for the life of `up`
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fd.close()
        return None
    return fd


async def _wait_first(*aws: Any) -> set[asyncio.Task]:
    tasks = [asyncio.ensure_future(a) for a in aws]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    return done


async def _up(home: Path, *, ready_within: float) -> int:
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)

    lock = _lock_home(home)
    if lock is None:
        _warn(f"jinshui is already running with home {home} (see {home / RUN_FILE}); stop it first")
        return 1
    run_file = home / RUN_FILE
    nats: NatsServer | None = None
    pg: PgServer | None = None
    stack: Stack | None = None
    try:
        _clean_previous_run(home)
        nats_url = os.environ.get("NATS_URL")
        database_url = os.environ.get("DATABASE_URL")
        # Blocking starts: a Ctrl-C meanwhile is seen (and acted on) right after.
        nats_users: dict[str, tuple[str, str]] = {}
        if not nats_url:
            # Each service connects as its own user (natsauth); an admin user is there for tools.
            passwords = natsauth.load_or_create_passwords(home / NATS_PASSWORDS_FILE)
            authorization = natsauth.render(
                passwords,
                prefix=os.environ.get("JINSHUI_STREAM_PREFIX", ""),
                admin_password=passwords[natsauth.ADMIN_USER],
            )
            nats = start_nats(home / "nats", port=DEFAULT_NATS_PORT, config_extra=authorization)
            nats_url = nats.url
            nats_users = natsauth.service_users(passwords)
        if not database_url and not stopping.is_set():
            pg = start_postgres(home / "pg")
            database_url = await ensure_database(pg.url, DATABASE_NAME)
        if stopping.is_set():
            return 0
        assert database_url is not None
        env = dict(os.environ)
        env.update(
            JINSHUI_ENV="development",
            JINSHUI_HOME=str(home),
            NATS_URL=nats_url,
            DATABASE_URL=database_url,
        )
        # Development runs the clock tests can move (design: "Time").
        env.setdefault("JINSHUI_CLOCK", "adjustable")
        env.setdefault("JINSHUI_CLOCK_FILE", str(home / "clock"))
        env.setdefault("LOG_LEVEL", "INFO")
        stack = Stack(
            env=env, log_dir=home / "logs", ports=choose_ports(SERVICES, DEFAULT_PORTS), nats_users=nats_users
        )
        urls = {"nats": _redact(nats_url), "database": _redact(database_url)}

        def record(ready: bool) -> None:
            _write_json(run_file, _run_info(home=home, ready=ready, nats=nats, pg=pg, stack=stack, urls=urls))

        record(False)
        starting = asyncio.ensure_future(stack.start(ready_within))
        done = await _wait_first(starting, stopping.wait())
        if starting not in done:
            _say("Interrupted while starting; stopping.")
            return 0
        starting.result()
        record(True)
        _say(
            _banner(
                stack,
                home=home,
                took=time.monotonic() - started,
                nats=urls["nats"],
                database=urls["database"],
                embedded=nats is not None or pg is not None,
            )
        )
        while not stopping.is_set():
            if dead := stack.exited():
                for name, rc in dead.items():
                    _warn(f"{name} exited with code {rc}; last lines of {stack.log_path(name)}:")
                    _warn(stack.log_tail(name, 30))
                _warn("Stopping everything.")
                return 1
            for label, server in (("nats-server", nats), ("postgres", pg)):
                if server is not None and not server.is_running():
                    _warn(f"{label} stopped unexpectedly; see {server.log_path}. Stopping everything.")
                    return 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.5)
        _say("Stopping…")
        return 0
    except (StackError, EmbeddedError) as e:
        _warn(f"jinshui up failed: {e}")
        return 1
    finally:
        # Signals that arrive now must not cut the shutdown short.
        if stack is not None:
            await stack.stop()
        if nats is not None:
            nats.stop()
        if pg is not None:
            pg.stop()
        run_file.unlink(missing_ok=True)
        lock.close()
        _say("Stopped.")


def cmd_up(args: argparse.Namespace) -> int:
    """Run NATS, PostgreSQL and the four services in the foreground until Ctrl-C."""
    home = Path(args.home).resolve()
    return asyncio.run(_up(home, ready_within=args.timeout))


# ---------------------------------------------------------------------------------------------- token


def cmd_token(args: argparse.Namespace) -> int:
    """Print a development token signed with the key under HOME."""
    from jinshui.kit.tokens import issue_token

    token = issue_token(
        home=Path(args.home).resolve(),
        role=args.role,
        sub=args.sub,
        name=args.name or "",
        ttl_seconds=args.ttl,
    )
    print(token)
    return 0


# --------------------------------------------------------------------------------------------- status


def _targets(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, int], dict[str, Any]] | None:
    if args.url:
        urls = {}
        for i, item in enumerate(args.url, 1):
            name, sep, url = item.partition("=")
            urls[name if sep else f"service{i}"] = url if sep else item
        return urls, {}, {}
    run_file = Path(args.home).resolve() / RUN_FILE
    try:
        info = json.loads(run_file.read_text())
    except FileNotFoundError:
        return None
    services = info.get("services") or {}
    urls = {name: entry["url"] for name, entry in services.items()}
    pids = {name: entry["pid"] for name, entry in services.items()}
    servers = {k: info[k] for k in ("nats", "postgres") if info.get(k)}
    return urls, pids, servers


def cmd_status(args: argparse.Namespace) -> int:
    """Print one line per service: its URL and whether /readyz answers 200."""
    targets = _targets(args)
    if targets is None:
        _say(f"jinshui is not running from {Path(args.home).resolve()} (no {RUN_FILE}); try --url")
        return 1
    urls, pids, servers = targets
    width = max(len(u) for u in [*urls.values(), *(e.get("url", "") for e in servers.values())]) + 2
    healthy = True
    with httpx.Client(timeout=3.0) as client:
        for name in sorted(urls, key=lambda n: n != "gateway"):
            url = urls[name]
            try:
                resp = client.get(url.rstrip("/") + "/readyz")
                state = "ready" if resp.status_code == 200 else f"not ready (HTTP {resp.status_code})"
                healthy &= resp.status_code == 200
            except httpx.HTTPError as e:
                state = f"down ({type(e).__name__})"
                healthy = False
            pid = f"pid {pids[name]}" if name in pids else ""
            _say(f"{name:<10} {url:<{width}} {state:<24} {pid}".rstrip())
    for name, entry in servers.items():
        pid = entry.get("pid")
        if pid is None:
            state = "external"
        else:
            state = "running" if process_alive(pid) else "gone"
            healthy &= state == "running"
        _say(f"{name:<10} {entry.get('url', ''):<{width}} {state:<24} {f'pid {pid}' if pid else ''}".rstrip())
    return 0 if healthy else 1


# ----------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `jinshui` command."""
    from jinshui.kit.tokens import ROLES

    parser = argparse.ArgumentParser(prog="jinshui", description="Jinshui police–grid integration platform")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run everything on this machine (embedded NATS and PostgreSQL)")
    up.add_argument("--home", default=_default_home(), help="data, keys and logs (default: %(default)s)")
    up.add_argument("--timeout", type=float, default=120, help="seconds to wait for readiness")
    up.set_defaults(func=cmd_up)

    token = sub.add_parser("token", help="print a development token")
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument("--sub", default=None, help="subject (default: <role>-1)")
    token.add_argument("--name", default="", help="display name")
    token.add_argument("--ttl", type=int, default=12 * 3600, help="lifetime in seconds")
    token.add_argument("--home", default=_default_home(), help="where the signing key is")
    token.set_defaults(func=cmd_token)

    status = sub.add_parser("status", help="readiness of a running stack")
    status.add_argument("--home", default=_default_home(), help="where `up` wrote run.json")
    status.add_argument("--url", action="append", help="NAME=URL (repeatable) instead of run.json")
    status.set_defaults(func=cmd_status)

    from jinshui.cli import importer

    importer.add_parser(sub, _default_home())
    from jinshui.cli import demo

    demo.add_parser(sub, _default_home())
    from jinshui.cli import dlq

    dlq.add_parser(sub, _default_home())
    from jinshui.cli import backup

    backup.add_parsers(sub, _default_home())
    from jinshui.cli import replay

    replay.add_parser(sub, _default_home())
    from jinshui.cli import keys

    keys.add_parser(sub, _default_home())
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `jinshui` command."""
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
