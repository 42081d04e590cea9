"""`jinshui up` as a user runs it: embedded servers, fallback ports, Ctrl-C, a crashed run, nothing left behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from jinshui.cli._proc import process_alive, signal_group
from jinshui.cli.embedded import stop_stale_servers

pytestmark = pytest.mark.timeout(600)

READY_TIMEOUT = 180


def _occupy(port: int) -> socket.socket | None:
    """Listen on `port` unless someone already does (either way `up` must not get it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    sock.listen()
    return sock


@pytest.fixture
def held_default_ports():
    """The default ports (gateway 8000, NATS 4222) this test holds; one someone else holds may be freed."""
    socks = {port: s for port in (8000, 4222) if (s := _occupy(port)) is not None}
    yield set(socks)
    for sock in socks.values():
        sock.close()


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    return url if not parts.password else url.replace(f":{parts.password}@", ":***@", 1)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("NATS_URL", "DATABASE_URL", "JINSHUI_HOME"):
        env.pop(var, None)
    return env


class Up:
    """A `jinshui up` process, in its own process group as a shell would run it."""

    def __init__(self, home: Path, out: Path, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.out = out
        with open(out, "ab") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jinshui.cli", "up", "--home", str(home)],
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env or _env(),
                start_new_session=True,
            )

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        run_file = self.home / "run.json"
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"jinshui up exited with {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(FileNotFoundError, ValueError):
                info = json.loads(run_file.read_text())
                if info["pid"] == self.proc.pid and info["ready"]:
                    return info
            if time.monotonic() >= deadline:
                pytest.fail(f"jinshui up not ready after {timeout} s:\n{self.output()}")
            time.sleep(0.2)

    def signal(self, sig: int) -> None:
        signal_group(self.proc.pid, sig)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"jinshui up still running {timeout} s after the signal:\n{self.output()}")


def _pids(info: dict[str, Any]) -> dict[str, int]:
    pids = {name: entry["pid"] for name, entry in info["services"].items()}
    for server in ("nats", "postgres"):
        if info[server]["pid"]:
            pids[server] = info[server]["pid"]
    return pids


def _wait_gone(pids: dict[str, int], timeout: float = 15) -> list[str]:
    deadline = time.monotonic() + timeout
    while (alive := [name for name, pid in pids.items() if process_alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


@pytest.fixture
def ups(tmp_path: Path):
    """Every `up` a test starts; whatever the outcome, nothing of theirs outlives the test."""
    started: list[Up] = []
    yield started
    for up in started:
        if up.proc.poll() is None:
            up.signal(signal.SIGKILL)
            up.proc.wait()
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
            info = json.loads((up.home / "run.json").read_text())
            for entry in info["services"].values():
                signal_group(entry["pid"], signal.SIGKILL)
    stop_stale_servers(tmp_path)


def _check_serving(info: dict[str, Any], *, held: set[int] | frozenset[int] = frozenset()) -> None:
    used = {urlsplit(info["services"]["gateway"]["url"]).port, urlsplit(info["nats"]["url"]).port}
    assert not used & held
    with httpx.Client(timeout=5) as client:
        for entry in info["services"].values():
            assert client.get(entry["url"] + "/readyz").status_code == 200


def test_up_serves_until_ctrl_c_then_leaves_nothing_behind(tmp_path: Path, held_default_ports: set[int], ups) -> None:
    home = tmp_path / "home"
    up = Up(home, tmp_path / "up1.out")
    ups.append(up)
    info = up.wait_ready()
    assert set(info["services"]) == {"gateway", "registry", "incidents", "risk"}
    _check_serving(info, held=held_default_ports)
    out = up.output()
    assert info["services"]["gateway"]["url"] in out
    assert "jinshui token --role police" in out
    assert "curl" in out

    status = subprocess.run(
        [sys.executable, "-m", "jinshui.cli", "status", "--home", str(home)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=30,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count(" ready") == 4

    pids = _pids(info)
    assert set(pids) == {"gateway", "registry", "incidents", "risk", "nats", "postgres"}
    up.signal(signal.SIGINT)
    assert up.wait() == 0, up.output()
    assert not (home / "run.json").exists()
    assert _wait_gone(pids) == []

    # The same home again: the data is reused.
    again = Up(home, tmp_path / "up2.out")
    ups.append(again)
    info = again.wait_ready()
    _check_serving(info, held=held_default_ports)
    again.signal(signal.SIGTERM)
    assert again.wait() == 0, again.output()
    assert _wait_gone(_pids(info)) == []


def test_up_recovers_from_a_crashed_run(tmp_path: Path, ups) -> None:
    home = tmp_path / "home"
    crashed = Up(home, tmp_path / "up1.out")
    ups.append(crashed)
    first = crashed.wait_ready()
    crashed.signal(signal.SIGKILL)
    crashed.proc.wait()

    up = Up(home, tmp_path / "up2.out")
    ups.append(up)
    info = up.wait_ready()
    _check_serving(info)
    # Nothing of the crashed run is left: its services, NATS and PostgreSQL were stopped or replaced.
    assert _wait_gone(_pids(first)) == []
    up.signal(signal.SIGINT)
    assert up.wait() == 0, up.output()
    assert _wait_gone(_pids(info)) == []


def test_a_second_up_on_the_same_home_is_refused(tmp_path: Path, ups) -> None:
    home = tmp_path / "home"
    first = Up(home, tmp_path / "up1.out")
    ups.append(first)
    first.wait_ready()
    second = subprocess.run(
        [sys.executable, "-m", "jinshui.cli", "up", "--home", str(home)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert second.returncode == 1
    assert "already running" in second.stderr
    assert first.proc.poll() is None
    first.signal(signal.SIGINT)
    assert first.wait() == 0


def test_up_stops_everything_when_a_service_dies(tmp_path: Path, ups) -> None:
    up = Up(tmp_path / "home", tmp_path / "up.out")
    ups.append(up)
    info = up.wait_ready()
    os.kill(info["services"]["registry"]["pid"], signal.SIGKILL)
    assert up.wait() == 1
    assert "registry exited with code -9" in up.output()
    assert _wait_gone(_pids(info)) == []


def test_up_uses_the_servers_it_is_given(tmp_path: Path, servers, database_url: str, stream_prefix: str, ups) -> None:
    env = {**_env(), "NATS_URL": servers.nats_url, "DATABASE_URL": database_url}
    env["JINSHUI_STREAM_PREFIX"] = stream_prefix
    up = Up(tmp_path / "home", tmp_path / "up.out", env=env)
    ups.append(up)
    info = up.wait_ready()
    # The URL as given, its password (the test servers' admin) redacted.
    assert info["nats"] == {"url": _redacted(servers.nats_url), "pid": None}
    assert info["postgres"] == {"url": database_url, "pid": None}
    assert not (tmp_path / "home" / "nats").exists() and not (tmp_path / "home" / "pg").exists()
    _check_serving(info)
    up.signal(signal.SIGINT)
    assert up.wait() == 0, up.output()
    assert _wait_gone(_pids(info)) == []
