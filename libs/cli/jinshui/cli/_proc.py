"""Process and port helpers shared by the embedded servers, the stack and the command."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """`preexec_fn`: the child gets SIGTERM when the thread that started it dies (Linux only)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on host:port now (SO_REUSEADDR, as servers set it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now, chosen by the kernel."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def pick_port(preferred: int | None, *, avoid: Iterable[int] = ()) -> int:
    """`preferred` when it is free, else a free port not in `avoid`."""
    avoid = set(avoid)
    if preferred and preferred not in avoid and port_is_free(preferred):
        return preferred
    while True:
        port = free_port()
        if port not in avoid:
            return port


def signal_group(pid: int, sig: int) -> bool:
    """Send `sig` to the process group led by `pid`; False when there is no such group."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def process_alive(pid: int | None) -> bool:
    """Whether `pid` is a live process (a zombie is not)."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child to end; True when it did."""
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def terminate_foreign(pid: int, *, timeout: float = 10, first: int = signal.SIGTERM, group: bool = True) -> None:
    """Stop a process we did not start (left over from a crashed run): `first`, then SIGKILL."""
    sender = signal_group if group and _is_group_leader(pid) else _signal_pid
    sender(pid, first)
    if not wait_gone(pid, timeout):
        sender(pid, signal.SIGKILL)
        wait_gone(pid, 5)


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _signal_pid(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def find_processes(name: str, arg: Callable[[str], bool]) -> list[psutil.Process]:
    """Live processes called `name` with a command-line argument for which `arg` is true."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["name"] == name and any(arg(a) for a in proc.info["cmdline"] or ()):
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
    return found


def listens_on(pid: int, port: int) -> bool:
    """Whether the process `pid` (or one of its children) listens on TCP `port`."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return False
    for p in procs:
        with contextlib.suppress(psutil.Error):
            for conn in p.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                    return True
    return False


def log_tail(path: Path, lines: int = 60, max_bytes: int = 64 * 1024) -> str:
    """The last `lines` lines of a log file ('' when it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
