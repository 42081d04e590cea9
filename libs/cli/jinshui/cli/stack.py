"""The four services as real processes, each in its own process group, with readiness waits."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from jinshui.cli._proc import die_with_parent, listens_on, log_tail, pick_port, port_is_free, signal_group

SERVICES = ("registry", "incidents", "risk", "gateway")
DEFAULT_PORTS = {"gateway": 8000, "registry": 8001, "incidents": 8002, "risk": 8003}
# What the gateway calls synchronously, and the variables that tell it where.
UPSTREAMS = {"registry": "REGISTRY_URL", "incidents": "INCIDENTS_URL", "risk": "RISK_URL"}

__all__ = ["DEFAULT_PORTS", "SERVICES", "ServiceFailed", "Stack", "StackError", "choose_ports"]


class StackError(RuntimeError):
    """A service could not be started or made ready; the message carries its log's tail."""


class ServiceFailed(StackError):
    """A service exited, or did not become ready in time."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def choose_ports(services: Sequence[str], preferred: Mapping[str, int] | None = None) -> dict[str, int]:
    """A distinct port per service: the preferred one when free, else a free one."""
    preferred = preferred or {}
    chosen: dict[str, int] = {}
    for name in services:
        chosen[name] = pick_port(preferred.get(name), avoid=chosen.values())
    return chosen


class Stack:
    """Starts services as `python -m jinshui.<name>`, configured by environment, and stops them."""

    def __init__(
        self,
        *,
        env: Mapping[str, str],
        log_dir: Path,
        services: Sequence[str] = SERVICES,
        ports: Mapping[str, int] | None = None,
        nats_users: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        self.services = tuple(services)
        # Each service's own NATS (user, password), set as its NATS_USER / NATS_PASSWORD.
        self.nats_users = dict(nats_users or {})
        self.log_dir = Path(log_dir)
        self._env = dict(env)
        given = dict(ports or {})
        self.ports = {name: given[name] for name in self.services if name in given}
        self.ports.update(choose_ports([s for s in self.services if s not in given], None))
        if len(set(self.ports.values())) != len(self.ports):
            raise StackError(f"two services on one port: {self.ports}")
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._swept: set[int] = set()

    def __repr__(self) -> str:
        return f"Stack({', '.join(f'{n}={self.url(n)}' for n in self.services)})"

    async def __aenter__(self) -> Stack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def url(self, name: str) -> str:
        """The service's base URL, http://127.0.0.1:PORT."""
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def urls(self) -> dict[str, str]:
        return {name: self.url(name) for name in self.services}

    def pid(self, name: str) -> int:
        """The pid (and process group id) of the service's current process."""
        return self._procs[name].pid

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 60) -> str:
        """The last lines of the service's log."""
        return log_tail(self.log_path(name), lines)

    def returncode(self, name: str) -> int | None:
        """The exit code of the service's process, None while it runs (or was never started)."""
        proc = self._procs.get(name)
        return None if proc is None else proc.poll()

    def exited(self) -> dict[str, int]:
        """The started services whose process has exited, with their exit codes."""
        return {name: rc for name in self._procs if (rc := self.returncode(name)) is not None}

    def env_for(self, name: str) -> dict[str, str]:
        """The environment the service is started with."""
        env = dict(self._env)
        env.setdefault("HTTP_HOST", "127.0.0.1")
        env["HTTP_PORT"] = str(self.ports[name])
        env["OTEL_SERVICE_NAME"] = f"jinshui-{name}"
        if name in self.nats_users:
            env["NATS_USER"], env["NATS_PASSWORD"] = self.nats_users[name]
        if name == "gateway":
            for upstream, var in UPSTREAMS.items():
                if upstream in self.ports:
                    env[var] = self.url(upstream)
        return env

    def _spawn(self, name: str) -> None:
        if name not in self.ports:
            raise StackError(f"{name} is not a service of this stack ({', '.join(self.services)})")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(name), "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- jinshui: starting {name} on port {self.ports[name]} at {stamp} ---\n".encode())
            log.flush()
            self._procs[name] = subprocess.Popen(
                [sys.executable, "-m", f"jinshui.{name}"],
                env=self.env_for(name),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # The services die with the process that runs them, even when it is SIGKILLed.
                preexec_fn=die_with_parent,
            )

    async def start(self, timeout: float = 60) -> None:
        """Start every service and wait until each answers /readyz with 200; on failure stop them all."""
        deadline = time.monotonic() + timeout
        try:
            for name in self.services:
                if self.returncode(name) is not None or name not in self._procs:
                    self._spawn(name)
            for attempt in range(len(self.services) + 2):
                try:
                    await self._wait_ready(self.services, max(0.0, deadline - time.monotonic()))
                    return
                except ServiceFailed as e:
                    # Another process took the port between our check and the service's bind: move it.
                    stolen = self.returncode(e.name) is not None and not port_is_free(self.ports[e.name])
                    if not stolen or attempt == len(self.services) + 1:
                        raise
                    await self._move(e.name)
        except BaseException:
            await self.stop()
            raise

    async def _move(self, name: str) -> None:
        self.ports[name] = pick_port(None, avoid=self.ports.values())
        self._spawn(name)
        if name in UPSTREAMS and "gateway" in self._procs and self.returncode("gateway") is None:
            await self._stop_one("gateway", seconds=10)
            self._spawn("gateway")

    async def start_service(self, name: str, timeout: float = 60) -> None:
        """(Re)start one service and wait until it is ready."""
        if name in self._procs and self.returncode(name) is None:
            await self._stop_one(name, seconds=10)
        self._spawn(name)
        await self._wait_ready([name], timeout)

    async def wait_ready(self, names: Sequence[str] | None = None, timeout: float = 60) -> None:
        """Wait until the given (default: all) running services answer /readyz with 200."""
        await self._wait_ready(list(names or self.services), timeout)

    async def _wait_ready(self, names: Sequence[str], seconds: float) -> None:
        pending = list(names)
        last: dict[str, str] = dict.fromkeys(pending, "no answer")
        deadline = time.monotonic() + seconds
        async with httpx.AsyncClient(timeout=2.0) as client:
            while pending:
                for name in list(pending):
                    rc = self.returncode(name)
                    if rc is not None:
                        raise ServiceFailed(
                            name,
                            f"{name} exited with code {rc} before it was ready; "
                            f"{self.log_path(name)}:\n{self.log_tail(name)}",
                        )
                    try:
                        resp = await client.get(f"{self.url(name)}/readyz")
                    except httpx.HTTPError as e:
                        last[name] = f"{type(e).__name__}: {e}"
                        continue
                    if resp.status_code == 200 and listens_on(self.pid(name), self.ports[name]):
                        pending.remove(name)
                    elif resp.status_code == 200:
                        last[name] = f"port {self.ports[name]} is answered by another process"
                    else:
                        last[name] = f"HTTP {resp.status_code}: {resp.text[:300]}"
                if not pending:
                    return
                if time.monotonic() >= deadline:
                    name = pending[0]
                    raise ServiceFailed(
                        name,
                        f"not ready after {seconds:.0f} s: "
                        + "; ".join(f"{n} ({last[n]})" for n in pending)
                        + f"\n{self.log_path(name)}:\n{self.log_tail(name)}",
                    )
                await asyncio.sleep(0.1)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the service's process group."""
        signal_group(self.pid(name), sig)

    async def wait_exit(self, name: str, timeout: float) -> int | None:
        """Wait for the service's process to exit; its exit code, or None if it still runs."""
        deadline = time.monotonic() + timeout
        while (rc := self.returncode(name)) is None:
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.05)
        return rc

    async def _stop_one(self, name: str, seconds: float) -> None:
        proc = self._procs[name]
        if proc.poll() is None:
            signal_group(proc.pid, signal.SIGTERM)
            if await self.wait_exit(name, seconds) is None:
                signal_group(proc.pid, signal.SIGKILL)
                await self.wait_exit(name, 5)
        self._sweep(proc)

    def _sweep(self, proc: subprocess.Popen[bytes]) -> None:
        # Children left in the group of a process that has exited; once, as the pid may be reused later.
        if proc.poll() is not None and proc.pid not in self._swept:
            signal_group(proc.pid, signal.SIGKILL)
            self._swept.add(proc.pid)

    async def stop(self, timeout: float = 10) -> None:
        """SIGTERM every service's process group, SIGKILL what is left after `timeout`; idempotent."""
        running = [n for n in self._procs if self.returncode(n) is None]
        for name in reversed(running):
            signal_group(self.pid(name), signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name in running:
            await self.wait_exit(name, max(0.0, deadline - time.monotonic()))
        for name, proc in self._procs.items():
            if proc.poll() is None:
                signal_group(proc.pid, signal.SIGKILL)
                await self.wait_exit(name, 5)
            self._sweep(proc)
