"""The services as processes: start, readiness, kill and restart, stop leaving nothing behind."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import httpx
import psutil
import pytest

from jinshui.cli._proc import process_alive
from jinshui.cli.stack import SERVICES, ServiceFailed, Stack, choose_ports


def test_choose_ports_prefers_the_given_ones_and_avoids_taken_ones() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        ports = choose_ports(["gateway", "registry"], {"gateway": busy, "registry": free})
    assert ports["registry"] == free
    assert ports["gateway"] not in (busy, free)


def test_gateway_is_told_where_the_other_services_are(tmp_path: Path) -> None:
    stack = Stack(env={"LOG_LEVEL": "DEBUG", "REGISTRY_URL": "http://elsewhere"}, log_dir=tmp_path)
    env = stack.env_for("gateway")
    assert env["REGISTRY_URL"] == stack.url("registry")
    assert env["INCIDENTS_URL"] == stack.url("incidents")
    assert env["RISK_URL"] == stack.url("risk")
    assert env["HTTP_PORT"] == str(stack.ports["gateway"])
    assert env["OTEL_SERVICE_NAME"] == "jinshui-gateway"
    assert env["LOG_LEVEL"] == "DEBUG"
    assert len(set(stack.ports.values())) == len(SERVICES)

    alone = Stack(env={"REGISTRY_URL": "http://elsewhere"}, log_dir=tmp_path, services=["gateway"])
    assert alone.env_for("gateway")["REGISTRY_URL"] == "http://elsewhere"


async def test_a_service_that_exits_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    stack = Stack(env=dict(os.environ), log_dir=tmp_path, services=["no_such_service"])
    with pytest.raises(ServiceFailed, match="No module named") as failure:
        await stack.start(timeout=30)
    assert failure.value.name == "no_such_service"
    assert "exited with code 1" in str(failure.value)
    assert (tmp_path / "no_such_service.log").exists()
    await stack.stop()  # idempotent after a failed start


async def test_stack_starts_every_service_and_stops_them_all(stack) -> None:
    started = await stack()
    pids = {name: started.pid(name) for name in SERVICES}
    async with httpx.AsyncClient(timeout=5) as client:
        for name in SERVICES:
            assert (await client.get(f"{started.url(name)}/readyz")).status_code == 200
    await started.stop()
    for name, pid in pids.items():
        assert not process_alive(pid), name
        assert started.returncode(name) is not None
    await started.stop()


async def test_a_killed_service_is_seen_and_can_be_started_again(stack) -> None:
    started = await stack()
    old = started.pid("risk")
    started.kill("risk")
    assert await started.wait_exit("risk", 10) == -signal.SIGKILL
    assert started.exited() == {"risk": -signal.SIGKILL}
    await started.start_service("risk")
    assert started.pid("risk") != old
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(f"{started.url('risk')}/readyz")).status_code == 200


async def test_services_run_in_their_own_process_groups(stack) -> None:
    started = await stack(services=["registry"])
    pid = started.pid("registry")
    assert os.getpgid(pid) == pid != os.getpgid(0)
    assert "starting registry" in started.log_path("registry").read_text()


async def test_a_service_whose_port_was_taken_moves_to_a_free_one(stack) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        started = await stack(services=["registry", "gateway"], ports={"registry": taken})
        assert started.ports["registry"] != taken
        # The running gateway was (re)started knowing the registry's new address.
        assert psutil.Process(started.pid("gateway")).environ()["REGISTRY_URL"] == started.url("registry")
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"{started.url('registry')}/readyz")).status_code == 200
            assert (await client.get(f"{started.url('gateway')}/readyz")).status_code == 200


async def test_another_stacks_service_on_the_port_is_not_taken_for_ours(stack) -> None:
    first = await stack(services=["registry"])
    port = first.ports["registry"]
    second = await stack(services=["registry"], ports={"registry": port})
    assert second.ports["registry"] != port
    assert second.pid("registry") != first.pid("registry")
    assert first.returncode("registry") is None
