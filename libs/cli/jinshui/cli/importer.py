"""`jinshui import FILE`: a CSV of households, persons and residencies, streamed to the gateway's /v1/imports.

The file is sent as it is read (any size, constant memory), with a progress bar on stderr; the report (the
summary, then one line per rejected row: row, column, reason) is printed on stdout as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

BLOCK = 256 * 1024


def _gateway_url(args: argparse.Namespace) -> str:
    if args.url:
        return args.url
    run = json.loads((Path(args.home).resolve() / "run.json").read_text())
    return run["services"]["gateway"]["url"]


def _token(args: argparse.Namespace) -> str:
    if args.token:
        return args.token
    from jinshui.kit.tokens import issue_token

    return issue_token(home=Path(args.home).resolve(), role="community_admin", sub=args.sub)


def _blocks(path: Path, size: int, *, quiet: bool) -> Iterator[bytes]:
    sent, started = 0, time.monotonic()
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            sent += len(block)
            if not quiet:
                _bar(sent, size, time.monotonic() - started)
            yield block
    if not quiet:
        print(" sent; waiting for the registry's report", file=sys.stderr, flush=True)


def _bar(done: int, total: int, elapsed: float) -> None:
    share = done / total if total else 1.0
    filled = int(share * 30)
    rate = done / elapsed / 1e6 if elapsed > 0 else 0.0
    line = f"\r[{'#' * filled}{'.' * (30 - filled)}] {share:6.1%} {done / 1e6:8.1f} MB {rate:6.1f} MB/s"
    print(line, end="", file=sys.stderr, flush=True)


def cmd_import(args: argparse.Namespace) -> int:
    """Stream FILE to /v1/imports; print the report; exit 1 if any row was rejected."""
    path = Path(args.file)
    headers = {"Authorization": f"Bearer {_token(args)}", "Content-Type": "text/csv"}
    url = _gateway_url(args).rstrip("/") + "/v1/imports"
    timeout = httpx.Timeout(args.timeout, connect=10)
    content = _blocks(path, path.stat().st_size, quiet=args.quiet)
    with (
        httpx.Client(timeout=timeout) as client,
        client.stream("POST", url, content=content, headers=headers, params={"encoding": args.encoding}) as r,
    ):
        if r.status_code != 200:
            r.read()
            print(f"\nimport refused ({r.status_code}): {r.text}", file=sys.stderr)
            return 2
        lines = r.iter_lines()
        summary = json.loads(next(lines))
        print(json.dumps(summary, ensure_ascii=False), flush=True)
        for line in lines:
            if line:
                print(line, flush=True)
    if not args.quiet:
        print(
            f"{summary['rows']} rows: {summary['applied']} applied, {summary['unchanged']} unchanged, "
            f"{summary['rejected']} rejected ({summary['encoding']})",
            file=sys.stderr,
        )
    return 1 if summary["rejected"] else 0


def add_parser(sub, default_home: str) -> None:
    p = sub.add_parser("import", help="bulk import households, persons and residencies from a CSV file")
    p.add_argument("file", help="CSV (UTF-8 or GBK); columns: address, grid, household_code, name, id_number, ...")
    p.add_argument("--encoding", choices=("auto", "utf-8", "gbk"), default="auto")
    p.add_argument("--url", help="the gateway (default: from run.json under --home)")
    p.add_argument("--token", help="a community_admin token (default: a development token from --home)")
    p.add_argument("--sub", default="importer", help="the subject of the development token")
    p.add_argument("--home", default=default_home)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_import)
