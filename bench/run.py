"""`python -m bench`: start the embedded stack, measure the floors, run the scenarios, print and save the table.

python -m bench                        # the full run (at most 10 minutes on a 2-core machine)
python -m bench --scenario latency     # one scenario (the floors are always measured)
python -m bench --size smoke           # a tiny run of everything: checks the harness works
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psutil
import uvloop

from bench import scenarios
from bench.environment import BenchEnv, raise_open_files_limit
from bench.floors import nats_floors, postgres_floors
from bench.monitor import Watch
from bench.profile import Profiler
from bench.scenarios import SIZES, Size

RESULTS = Path(__file__).parent / "results"
# The numbering.
SCENARIOS = ("intake", "sightings", "visits", "latency", "import", "footprint")
# Scenarios the harness does not run yet, and how to tell from the gateway's OpenAPI whether the endpoint exists.
NOT_BUILT: dict[str, tuple[str, str]] = {}
RUNNABLE = SCENARIOS
# The order they run in: intake last, as it leaves a backlog behind that nothing waits for; import before it, as
# its million rows make every later registry query bigger.
RUN_ORDER = ("visits", "latency", "sightings", "import", "intake")
GOALS = {
    "intake": "≥ 20,000 records/s and ≥ 0.5 × floor",
    "sightings": "≥ 10,000 sightings/s, 0 missed",
    "visits": "≥ 5,000 visits/s",
    "latency": "p50 ≤ 10 ms, p99 ≤ 50 ms, 0 missed",
    "import": "≥ 50,000 rows/s, card p99 ≤ 10 ms",
    "footprint": "≤ 150 MB per service",
}
FOOTPRINT_GOAL_MB = 150.0


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# --- figures against floors and goals -----------------------------------------------------------------
def _judge(name: str, result: dict, floors: dict) -> None:
    """Fill in floor, ratio and whether the goal is met."""
    fig = result.get("figure")
    if fig is None:
        return
    if name == "intake":
        floor = floors.get("publish_windowed", {}).get("rate")
        result["floor"] = {"value": floor, "unit": "msg/s", "what": "raw JetStream publish, 500 in flight"}
        result["ratio"] = fig / floor if floor else None
        result["met"] = fig >= 20_000 and (result["ratio"] or 0) >= 0.5
    elif name == "visits":
        pub, fetch = floors.get("publish_windowed", {}).get("rate"), floors.get("fetch_ack", {}).get("rate")
        floor = min(x for x in (pub, fetch) if x) if (pub or fetch) else None
        result["floor"] = {"value": floor, "unit": "msg/s", "what": "min(raw publish 500 in flight, fetch(500)+ack)"}
        result["ratio"] = fig / floor if floor else None
        result["met"] = fig >= 5_000
    elif name == "latency":
        pub, commit = floors.get("publish_one", {}).get("p50_ms"), floors.get("commit_one", {}).get("p50_ms")
        floor = (pub or 0) + (commit or 0) or None
        result["floor"] = {"value": floor, "unit": "ms", "what": "one hop: publish-ack p50 + one-row commit p50"}
        result["ratio"] = fig / floor if floor else None
        f = result["figures"]
        result["met"] = (f["p50_ms"] or 1e9) <= 10 and (f["p99_ms"] or 1e9) <= 50 and f["missed"] == 0
    elif name == "sightings":
        pub = floors.get("publish_windowed", {}).get("rate")
        result["floor"] = {"value": pub, "unit": "msg/s", "what": "raw JetStream publish, 500 in flight"}
        result["ratio"] = fig / pub if pub else None
        result["met"] = fig >= 10_000 and not result.get("problems")
    elif name == "import":
        copy = floors.get("copy", {}).get("rate")
        result["floor"] = {"value": copy, "unit": "rows/s", "what": "raw asyncpg COPY, 500 rows per call"}
        result["ratio"] = fig / copy if copy else None
        p99 = result["figures"]["card_p99_ms"]
        result["met"] = fig >= 50_000 and p99 is not None and p99 <= 10
    elif name == "footprint":
        result["floor"] = None
        result["ratio"] = None
        result["met"] = not result.pop("met_detail", {}).get("over_goal")
    result["goal"] = GOALS[name]


def _num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "—"
    return f"{v:,.{digits}f}"


def _figure_text(name: str, r: dict) -> str:
    status = r.get("status")
    if status in ("not built yet", "no scenario yet"):
        return status
    if status == "error":
        return "ERROR"
    if status in ("skipped", "not run"):
        return status
    if name == "latency":
        f = r["figures"]
        times = f"p50 {_num(f['p50_ms'], 1)} / p99 {_num(f['p99_ms'], 1)} / max {_num(f['max_ms'], 1)} ms"
        return f"{times}, {f['missed']} missed"
    if name == "footprint":
        return f"{_num(r['figure'], 1)} {r['unit']}"
    if name == "import":
        f = r["figures"]
        return f"{_num(r['figure'])} rows/s; card p50 {_num(f['card_p50_ms'], 1)} / p99 {_num(f['card_p99_ms'], 1)} ms"
    return f"{_num(r['figure'])} {r['unit']}"


def table(results: dict) -> str:
    rows = [("scenario", "figure", "floor", "ratio", "goal", "met")]
    for i, name in enumerate(SCENARIOS, 1):
        r = results["scenarios"][name]
        floor = r.get("floor")
        floor_text = "—"
        if floor and floor.get("value") is not None:
            digits = 2 if floor["unit"] == "ms" else 0
            floor_text = f"{_num(floor['value'], digits)} {floor['unit']} ({floor['what']})"
        ratio = r.get("ratio")
        ratio_text = "—" if ratio is None else (f"{ratio:.1f}×" if name == "latency" else f"{ratio:.2f}")
        met = r.get("met")
        met_text = "—" if met is None else ("yes" if met else "no")
        rows.append((f"{i} {name}", _figure_text(name, r), floor_text, ratio_text, r.get("goal", "—"), met_text))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cpu_table(results: dict) -> str:
    names = ["gateway", "registry", "incidents", "risk", "nats-server", "postgres", "loadgen", "others"]
    rows = [("steady phase CPU, % of one core", *names)]
    for name in SCENARIOS:
        cpu = results["scenarios"][name].get("details", {}).get("cpu_pct_of_one_core")
        if cpu:
            rows.append((name, *(_num(cpu.get(n), 0) for n in names)))
    if len(rows) == 1:
        return ""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if c else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def floors_table(floors: dict, cpu: dict | None = None) -> str:
    others = (cpu or {}).get("cpu_pct_of_one_core", {}).get("others")
    meanwhile = f"; processes outside the run used {others:.0f}% of a core meanwhile" if others is not None else ""
    lines = [f"floors (this machine, this run{meanwhile}):"]
    for key, f in floors.items():
        extra = f", p50 {f['p50_ms']:.2f} ms" if "p50_ms" in f else ""
        lines.append(f"  {key:<29} {_num(f['rate']):>10} {f['unit']:<7} {f['what']}{extra}")
    return "\n".join(lines)


def pipeline_table(results: dict) -> str:
    lines = []
    for name in ("intake", "visits", "latency"):
        pipeline = results["scenarios"].get(name, {}).get("details", {}).get("pipeline")
        if not pipeline:
            continue
        lines.append(f"{name}, steady phase: consumer batches (mean time, share of the phase busy) and outbox rates")
        for key, v in pipeline.items():
            if "batches" in v:
                per = v["messages"] / v["batches"] if v["batches"] else 0
                lines.append(
                    f"  {key:<30} {v['batches']:>6} batches, {per:6.1f} msgs each, "
                    f"{v['mean_batch_ms']:8.1f} ms each, busy {v['busy_pct']:5.1f}%"
                )
            else:
                lines.append(f"  {key:<30} {v['published_per_s']:>9,.0f} events/s published")
    return "\n".join(lines)


def footprint_table(results: dict) -> str:
    per = results["scenarios"]["footprint"].get("details", {}).get("per_service")
    if not per:
        return ""
    lines = ["resident memory (MB): service, idle, peak under load (during)"]
    for name, v in per.items():
        lines.append(f"  {name:<10} {_num(v['idle_mb'], 1):>7} {_num(v['peak_mb'], 1):>7}  ({v['peak_during'] or '—'})")
    return "\n".join(lines)


def notes(results: dict) -> str:
    out = []
    for name in SCENARIOS:
        r = results["scenarios"][name]
        for p in r.get("problems", []):
            out.append(f"  ! {name}: {p}")
        for w in r.get("warnings", []):
            out.append(f"  ~ {name}: {w}")
        if r.get("status") == "error":
            out.append(f"  ! {name}: {r.get('error', '').splitlines()[0] if r.get('error') else 'error'}")
        if r.get("status") in ("not built yet", "no scenario yet"):
            out.append(f"  - {name}: {r['reason']}")
    lat = results["scenarios"]["latency"].get("details", {})
    if lat.get("beats_note"):
        out.append(f"  - latency: {lat['beats_note']}")
    if lat.get("pipeline_p50_ms") is not None:
        out.append(
            f"  - latency: first client per alert p50 {lat['pipeline_p50_ms']} ms / p99 {lat['pipeline_p99_ms']} ms; "
            f"{lat['desk_clients_connected']} of {lat['desk_clients']} desk clients connected"
        )
    batches = results["floors"].get("publish_batches", {}).get("rate")
    intake = results["scenarios"]["intake"].get("figure")
    if batches and intake:
        out.append(
            f"  - intake: raw publishing of 500-visit batches reaches {_num(batches)} records/s here; intake is "
            f"{intake / batches:.2f} of that (the table compares with 256-B messages, as the issue does)"
        )
    vis = results["scenarios"]["visits"].get("details", {})
    if vis.get("measured_to"):
        out.append(f"  - visits: measured to {vis['measured_to']}")
        out.append(f"  - visits: registry settled {_num(vis.get('registry_settled_per_s'))} visits/s in the same phase")
    for name in ("intake", "visits", "latency"):
        d = results["scenarios"][name].get("details", {})
        cpu = d.get("cpu_pct_of_one_core", {}).get("loadgen")
        if cpu is not None and cpu > 80:
            out.append(f"  ~ {name}: the load generator used {cpu:.0f}% of a core: it may be what limits the figure")
        others = d.get("cpu_pct_of_one_core", {}).get("others")
        if others is not None and others > 25:
            out.append(f"  ~ {name}: processes outside this run used {others:.0f}% of a core meanwhile: rough figures")
    run = results["run"]
    out.append(
        f"  - machine: {run['cpus']} CPUs, {run['memory_gb']} GB; load generator on the same machine; "
        f"sizes: {run['size']}; took {run.get('took_s', 0):.0f} s"
    )
    return "\n".join(["notes:", *out]) if out else ""


def report(results: dict) -> str:
    floors = floors_table(results["floors"], results.get("floors_cpu"))
    parts = [table(results), floors, cpu_table(results), pipeline_table(results), footprint_table(results)]
    if results.get("profiles"):
        parts.append(profile_text(results["profiles"]))
    parts.append(notes(results))
    return "\n\n".join(p.strip("\n") for p in parts if p.strip())


def profile_text(profiles: dict) -> str:
    lines = ["profiles (py-spy, busy samples only):"]
    for label, services in profiles.items():
        for name, s in services.items():
            if not s["samples"]:
                continue
            libs = ", ".join(f"{k} {v}%" for k, v in list(s["self_by_library_pct"].items())[:6])
            lines.append(f"  {label}/{name}: {s['samples']} samples; self by library: {libs}")
            for k, v in list(s["self_top_pct"].items())[:6]:
                lines.append(f"      self {v:5.1f}%  {k}")
            for k, v in list(s["inclusive_top_pct"].items())[:6]:
                lines.append(f"      under {v:4.1f}%  {k}")
    return "\n".join(lines)


# --- the run ----------------------------------------------------------------------------------------------
def _git_state() -> dict:
    """Which code was measured: the commit, and the files changed or added since (outside bench/)."""
    root = Path(__file__).parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain").splitlines() if not line[3:].startswith("bench/")]
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or None, "changed": changed}


def _selected(arg: str) -> list[str]:
    if arg in ("", "all"):
        return list(SCENARIOS)
    chosen = [s.strip() for s in arg.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    return chosen


async def _run(args: argparse.Namespace, size: Size, chosen: list[str]) -> dict:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    started = time.perf_counter()
    results: dict = {
        "run": {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "size": size.name,
            "sizes": dataclasses.asdict(size),
            "scenarios": chosen,
            "cpus": psutil.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "open_files_limit": raise_open_files_limit(),
            "nats": "embedded nats-server, JetStream file storage, sync_interval: always",
            "postgres": "embedded PostgreSQL, default settings (fsync on, synchronous_commit on)",
            "services": "four processes via jinshui.cli.stack.Stack, JINSHUI_ENV=development",
            "git": _git_state(),
        },
        "floors": {},
        "scenarios": {},
    }
    for name in SCENARIOS:
        if name in NOT_BUILT:
            reason = f"no {NOT_BUILT[name][1]} endpoint yet"
            results["scenarios"][name] = {"status": "not built yet", "figure": None, "reason": reason}
        else:
            results["scenarios"][name] = {"status": "skipped" if name not in chosen else "not run", "figure": None}
    env = BenchEnv(log=say)
    try:
        say("starting NATS (sync_interval always) and PostgreSQL under a temporary folder…")
        env.start_servers()
        say("measuring the floors…")
        floor_size = {"seconds": size.floor_seconds, "samples": size.floor_samples}
        servers = Watch(services={}, nats_pid=env.nats.pid, postgres_pid=env.pg.pid)
        window = servers.begin()
        results["floors"].update(await nats_floors(env.nats.url, **floor_size))
        results["floors"].update(await postgres_floors(env.pg.url, **floor_size))
        results["floors_cpu"] = servers.end(window).as_dict()
        say("measuring what `sync_interval: always` costs (a second nats-server with the default sync)…")
        results["floors"].update(await _default_sync_floors(env, floor_size))
        say("starting the four services…")
        t = time.perf_counter()
        await env.start_stack()
        await env.open_nats()
        results["run"]["stack_start_s"] = round(time.perf_counter() - t, 1)
        regular = size.households
        say(f"registering {regular + size.urgent_households} households over {size.beats} beats…")
        await env.register_households(beats=size.beats, regular=regular, urgent=size.urgent_households)
        results["run"]["households"] = {
            "registered": regular + size.urgent_households,
            "beats": size.beats,
            "per_s": round((regular + size.urgent_households) / env.households.seconds, 1),
        }
        await _endpoints_since(env, results)
        await env.wait_quiet(timeout=size.drain_timeout)
        watch = Watch(services=env.service_pids(), nats_pid=env.nats.pid, postgres_pid=env.pg.pid)
        await watch.sample_idle(2.0)
        profiler = Profiler(RESULTS / "profiles", env.service_pids()) if args.profile else None
        runners: dict[str, Callable] = {
            "visits": lambda: scenarios.visits(env, watch, size, profiler=profiler),
            "latency": lambda: scenarios.latency(env, watch, size, desk_clients=args.desk_clients),
            "intake": lambda: scenarios.intake(env, watch, size, profiler=profiler),
            "sightings": lambda: scenarios.sightings(env, watch, size),
            "import": lambda: scenarios.import_(env, watch, size),
        }
        load_ran = False
        for name in RUN_ORDER:
            if name not in chosen:
                continue
            say(f"scenario {name}…")
            results["scenarios"][name] = await _guard(env, runners[name])
            load_ran = load_ran or name in ("visits", "intake")
        if "footprint" in chosen:
            if not load_ran:
                say("footprint: a short intake load to sample memory under load…")
                short = dataclasses.replace(size, intake_warmup=1.0, intake_steady=min(10.0, size.intake_steady))
                await _guard(env, lambda: scenarios.intake(env, watch, short))
            results["scenarios"]["footprint"] = scenarios.footprint(watch, goal_mb=FOOTPRINT_GOAL_MB)
            results["scenarios"]["footprint"]["status"] = "ok"
        if profiler is not None:
            results["profiles"] = profiler.summaries()
    except BaseException as e:
        say(f"the run failed: {e!r}")
        results["error"] = traceback.format_exc()
        results["log_tails"] = env.log_tails()
        if not isinstance(e, Exception):
            raise
    finally:
        say("stopping everything…")
        await env.close()
        results["run"]["took_s"] = round(time.perf_counter() - started, 1)
    return results


async def _default_sync_floors(env: BenchEnv, floor_size: dict) -> dict:
    """The publish floors on a nats-server with the default `sync_interval` (the OS flushes every 2 minutes): set
    beside the run's own (`always`: acknowledged means on disk), they are the durability setting's cost."""
    from jinshui.cli.embedded import start_nats

    assert env.root is not None
    server = start_nats(env.root / "nats-default-sync", sync_always=False)
    try:
        measured = await nats_floors(server.url, **floor_size)
    finally:
        server.stop()
    out = {}
    for key in ("publish_one", "publish_windowed"):
        out[f"{key}_default_sync"] = {**measured[key], "what": measured[key]["what"] + " (sync_interval default)"}
    return out


async def _endpoints_since(env: BenchEnv, results: dict) -> None:
    """Say so when a scenario's endpoint exists although the harness does not run it yet."""
    try:
        paths = (await env.http.get("/openapi.json")).json().get("paths", {})
    except Exception:
        return
    for name, (needle, what) in NOT_BUILT.items():
        found = sorted(p for p in paths if needle in p)
        if found:
            results["scenarios"][name]["status"] = "no scenario yet"
            results["scenarios"][name]["reason"] = (
                f"the {what} endpoint exists ({', '.join(found)}) but the harness has no scenario for it yet"
            )


async def _guard(env: BenchEnv, run: Callable) -> dict:
    """Run one scenario; an exception makes it an error with the services' log tails, not the end of the run."""
    try:
        result = await run()
        result["status"] = "ok"
        return result
    except Exception as e:
        say(f"  error: {e!r}")
        return {
            "status": "error",
            "figure": None,
            "error": f"{e!r}\n{traceback.format_exc()}",
            "log_tails": env.log_tails(),
        }


def failed(results: dict) -> list[str]:
    """Why the run must exit non-zero: the run or a scenario errored, a check failed (missed alerts included)."""
    reasons = []
    if results.get("error"):
        reasons.append("the run failed: " + results["error"].strip().splitlines()[-1])
    for name in results["run"]["scenarios"]:
        r = results["scenarios"].get(name, {})
        if r.get("status") == "error":
            reasons.append(f"{name}: error")
        elif r.get("status") == "not run":
            reasons.append(f"{name}: not run")
        elif r.get("status") == "ok" and not isinstance(r.get("figure"), int | float):
            reasons.append(f"{name}: no figure")
        reasons += [f"{name}: {p}" for p in r.get("problems", [])]
    return reasons


def _override(size: Size, pairs: list[str]) -> Size:
    """The size with `field=value` overrides, e.g. `latency_rate=500` (see bench/scenarios.py: Size)."""
    types = {f.name: f.type for f in dataclasses.fields(size)}
    changes: dict[str, object] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in types or key == "name":
            fields = ", ".join(t for t in types if t != "name")
            raise SystemExit(f"--set {pair}: no size field {key!r}; fields: {fields}")
        changes[key] = int(value) if types[key] in ("int", int) else float(value)
    return dataclasses.replace(size, **changes) if changes else size


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="full")
    p.add_argument("--scenario", default="all", help="comma-separated names, or all")
    p.add_argument("--desk-clients", type=int, default=None, help="SSE desk clients for latency (full: 500)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a size field")
    p.add_argument("--out", type=Path, default=None, help="the JSON result (default: bench/results/…)")
    p.add_argument("--profile", action="store_true", help="py-spy every service in the intake and visits phases")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = _override(SIZES[args.size], args.set)
    chosen = [s for s in _selected(args.scenario) if s in RUNNABLE]
    if not chosen:
        raise SystemExit("nothing to run")
    results = uvloop.run(_run(args, size, chosen))
    for name in SCENARIOS:
        _judge(name, results["scenarios"][name], results["floors"])
    reasons = failed(results)
    results["ok"] = not reasons
    results["failures"] = reasons
    out = args.out or RESULTS / f"bench-{size.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str))
    print(report(results))
    print(f"\nresult: {out}")
    if reasons:
        print("FAILED:\n  " + "\n  ".join(reasons), file=sys.stderr)
        return 1
    return 0
