"""`jinshui token` and `jinshui status`, run as commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from jinshui.cli._proc import free_port
from jinshui.kit.tokens import TokenVerifier


def _jinshui(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jinshui.cli", *args], capture_output=True, text=True, timeout=60)


def test_token_is_signed_with_the_key_under_home(tmp_path: Path) -> None:
    result = _jinshui("token", "--role", "police", "--sub", "officer-7", "--name", "王警官", "--home", str(tmp_path))
    assert result.returncode == 0, result.stderr
    identity = TokenVerifier.for_development(tmp_path).verify(result.stdout.strip())
    assert (identity.sub, identity.role, identity.name) == ("officer-7", "police", "王警官")


def test_token_refuses_an_unknown_role(tmp_path: Path) -> None:
    result = _jinshui("token", "--role", "mayor", "--home", str(tmp_path))
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert not (tmp_path / "keys").exists()


def test_status_without_a_running_stack(tmp_path: Path) -> None:
    result = _jinshui("status", "--home", str(tmp_path))
    assert result.returncode == 1
    assert "not running" in result.stdout


def test_status_reports_a_service_that_does_not_answer(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = _jinshui("status", "--url", f"registry={url}")
    assert result.returncode == 1
    assert result.stdout.startswith("registry")
    assert url in result.stdout and "down" in result.stdout
