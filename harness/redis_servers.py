"""Real ``redis-server`` processes on free loopback ports: standalone, cluster and sentinel.

No pytest dependency: the fixtures live in ``tests.support.redis_fixtures``. Every server
binds 127.0.0.1 on a port picked by binding to port 0 (never 6379, the machine's own Redis),
keeps its files (config, log, cluster/sentinel state) in its own temporary directory and is
waited for with short polls, every wait bounded in time.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

HOST = "127.0.0.1"
FORBIDDEN_PORTS = frozenset({6379, 16379, 26379})  # the machine's own Redis (and its bus/sentinel)
CLUSTER_SLOTS = 16384
POLL = 0.05
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
SENTINEL_SERVICE = "mymaster"


def no_retry() -> Retry:
    """redis-py 8 retries a failed connection 3 times with backoff (seconds): not here."""
    return Retry(NoBackoff(), 0)


DeploymentMode = Literal["standard", "cluster", "sentinel"]
T = TypeVar("T")


class RedisServerError(RuntimeError):
    """A redis-server could not be started, or a deployment did not become ready in time."""


class RedisServerNotFound(RedisServerError):
    """The redis-server (or redis-cli / openssl) executable is not installed."""


# --------------------------------------------------------------------------- helpers


def _executable(name: str, env_var: str, package: str) -> str:
    path = os.environ.get(env_var) or shutil.which(name) or f"/usr/bin/{name}"
    if not os.access(path, os.X_OK):
        raise RedisServerNotFound(
            f"{name} not found (looked at ${env_var}, PATH and /usr/bin): install the Debian "
            f"package {package} (scripts/test.sh does it with apt-get)"
        )
    return path


def redis_server_path() -> str:
    return _executable("redis-server", "REDIS_SERVER", "redis-server")


def redis_cli_path() -> str:
    return _executable("redis-cli", "REDIS_CLI", "redis-tools")


@functools.lru_cache(maxsize=1)
def redis_server_version() -> tuple[int, int, int]:
    """``(7, 0, 15)`` for Debian's redis-server 7.0.15."""
    output = subprocess.run(
        [redis_server_path(), "--version"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", output)
    if not match:
        raise RedisServerError(f"cannot parse redis-server --version output: {output!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


@functools.lru_cache(maxsize=1)
def tls_supported() -> bool:
    """Whether this redis-server build has TLS (``BUILD_TLS=yes``; Debian's has).

    A TLS build asked for a TLS port without certificates complains about the missing
    certificate; a build without TLS rejects ``tls-port`` differently.
    """
    result = subprocess.run(
        [redis_server_path(), "--port", "0", "--tls-port", "1", "--bind", HOST],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return "No tls-cert-file configured" in result.stdout + result.stderr


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def free_port(*, cluster_bus: bool = False) -> int:
    """A free TCP port on 127.0.0.1 (bound to port 0); never 6379.

    With ``cluster_bus`` the port is also at most 55535 and ``port + 10000`` (the cluster
    bus) is free too.
    """
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port in FORBIDDEN_PORTS:
            continue
        if cluster_bus and (port + 10000 > 65535 or not _port_is_free(port + 10000)):
            continue
        return port
    raise RedisServerError("no free loopback port found")


def wait_until(
    condition: Callable[[], T | None], timeout: float, what: str, interval: float = POLL
) -> T:
    """Poll ``condition`` until it returns something truthy (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as error:  # not ready yet
            last_error = error
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise RedisServerError(f"timed out after {timeout:.1f} s waiting for {what}{detail}")
        time.sleep(interval)


def _run(args: Sequence[str], timeout: float, cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise RedisServerError(f"{args[0]} timed out after {timeout} s: {error}") from None
    if result.returncode != 0:
        raise RedisServerError(
            f"{' '.join(args)} failed with {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result.stdout


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: a CA, a server certificate (127.0.0.1 / localhost) and a client certificate."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    ca_key: Path | None = None


def make_tls_files(directory: str | os.PathLike[str]) -> TlsFiles:
    """Generate a private CA and a server and client certificate with the ``openssl`` CLI.

    Keys are EC P-256 (fast to generate). The server certificate has CN 127.0.0.1 and
    SAN ``IP:127.0.0.1, DNS:localhost``; the client certificate is for clientAuth.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RedisServerNotFound("openssl not found: install the Debian package openssl")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        ca_cert=out / "ca.crt",
        server_cert=out / "server.crt",
        server_key=out / "server.key",
        client_cert=out / "client.crt",
        client_key=out / "client.key",
        ca_key=out / "ca.key",
    )
    assert files.ca_key is not None
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run(
        [
            openssl, "req", "-x509", "-new", *newkey, "-sha256", "-days", "3650",
            "-keyout", str(files.ca_key), "-out", str(files.ca_cert),
            "-subj", "/CN=ticketlock test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ],
        timeout=30,
    )  # fmt: skip
    leaves = [
        ("server", files.server_key, files.server_cert, "/CN=127.0.0.1", "serverAuth",
         "subjectAltName=IP:127.0.0.1,DNS:localhost\n"),
        ("client", files.client_key, files.client_cert, "/CN=ticketlock-test-client",
         "clientAuth", ""),
    ]  # fmt: skip
    for name, key, cert, subject, usage, extra in leaves:
        csr = out / f"{name}.csr"
        ext = out / f"{name}.ext"
        ext.write_text(
            "basicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment,keyAgreement\n"
            f"extendedKeyUsage={usage}\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n" + extra,
            encoding="utf-8",
        )
        _run(
            [openssl, "req", "-new", *newkey, "-keyout", str(key), "-out", str(csr),
             "-subj", subject],
            timeout=30,
        )  # fmt: skip
        _run(
            [
                openssl, "x509", "-req", "-sha256", "-days", "3650", "-in", str(csr),
                "-CA", str(files.ca_cert), "-CAkey", str(files.ca_key),
                "-set_serial", str(secrets.randbits(63)), "-extfile", str(ext),
                "-out", str(cert),
            ],
            timeout=30,
        )  # fmt: skip
    return files


# --------------------------------------------------------------------------- one process

_LIVE: set[RedisProcess] = set()  # started and not yet reaped


@atexit.register
def _kill_leftovers() -> None:
    """Safety net: no redis-server outlives the test session, even if a fixture leaked one."""
    for process in list(_LIVE):
        with contextlib.suppress(Exception):
            process.kill()


class RedisProcess:
    """One ``redis-server`` (or sentinel) in its own directory on a loopback port.

    ``config`` holds extra config lines (``name value``); the port, bind address, directory
    and persistence settings are written by the class. ``username``/``password`` are the
    credentials used by ``start()``'s readiness check and ``client()`` (an admin account);
    ``tls`` plus ``tls_auth_clients`` switch the server to TLS only (``port 0``).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        config: Iterable[str] = (),
        args: Sequence[str] = (),
        password: str | None = None,
        username: str | None = None,
        tls: TlsFiles | None = None,
        tls_auth_clients: bool = False,
        sentinel: bool = False,
        cluster: bool = False,
        name: str = "redis",
    ) -> None:
        base = Path(directory) if directory is not None else Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        self.directory = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))
        self.name = name
        self.host = HOST
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port(cluster_bus=cluster)
        if self.port in FORBIDDEN_PORTS:
            raise ValueError(f"port {self.port} is reserved for the machine's own Redis")
        self.config = list(config)
        self.args = list(args)
        self.password = password
        self.username = username
        self.tls = tls
        self.tls_auth_clients = tls_auth_clients
        self.sentinel = sentinel
        self.cluster = cluster
        self.config_file = self.directory / ("sentinel.conf" if sentinel else "redis.conf")
        self.log_file = self.directory / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._written_for_port: int | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisProcess {self.name} {self.host}:{self.port} {state}>"

    # -- configuration

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _config_lines(self) -> list[str]:
        lines = [f"bind {self.host}", "daemonize no", f'dir "{self.directory}"', 'logfile ""']
        if self.tls is not None:
            lines += [
                "port 0",
                f"tls-port {self.port}",
                f'tls-cert-file "{self.tls.server_cert}"',
                f'tls-key-file "{self.tls.server_key}"',
                f'tls-ca-cert-file "{self.tls.ca_cert}"',
                f"tls-auth-clients {'yes' if self.tls_auth_clients else 'no'}",
            ]
        else:
            lines.append(f"port {self.port}")
        if not self.sentinel:
            lines += ['save ""', "appendonly no", "repl-diskless-sync-delay 0"]
            if redis_server_version() >= (7, 0, 0):
                lines += ["enable-debug-command yes", "shutdown-timeout 0"]
            if self.cluster:
                lines += [
                    "cluster-enabled yes",
                    f'cluster-config-file "nodes-{self.port}.conf"',
                    "cluster-node-timeout 5000",
                    f"cluster-announce-ip {self.host}",
                ]
        return lines + self.config

    def _write_config(self) -> None:
        # A sentinel rewrites its config (known sentinels, failovers): keep it on restart.
        if self._written_for_port == self.port and self.config_file.exists():
            return
        self.config_file.write_text("\n".join(self._config_lines()) + "\n", encoding="utf-8")
        self.config_file.chmod(0o600)
        self._written_for_port = self.port

    # -- lifecycle

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, timeout: float = START_TIMEOUT, attempts: int = 3) -> RedisProcess:
        """Start and wait until it answers PING; retry on "Address already in use".

        A first start moves to another free port on a clash (unless the port was given);
        ``restart()`` keeps the port and retries it.
        """
        if self.running:
            raise RedisServerError(f"{self!r} is already running")
        for attempt in range(1, attempts + 1):
            self._write_config()
            self._spawn()
            try:
                self._wait_ready(timeout)
                return self
            except RedisServerError:
                log = _tail(self.log_file)
                self.kill()
                if "Address already in use" in log and attempt < attempts:
                    if not self._fixed_port:
                        self.port = free_port(cluster_bus=self.cluster)
                    time.sleep(0.2 * attempt)
                    continue
                raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        command = [redis_server_path(), str(self.config_file), *self.args]
        if self.sentinel:
            command.append("--sentinel")
        with open(self.log_file, "ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} start {' '.join(command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,  # a ^C of the test run must not reach it first
            )
        _LIVE.add(self)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = self.client(socket_timeout=0.5, socket_connect_timeout=0.5)
        last: BaseException | None = None
        try:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RedisServerError(
                        f"{self.name} on {self.address} exited with {self.process.returncode}; "
                        f"log tail ({self.log_file}):\n{_tail(self.log_file)}"
                    )
                try:
                    if client.ping():
                        return
                except redis.RedisError as error:
                    last = error
                    # It answers, but refuses our credentials: a configuration error.
                    if isinstance(error, redis.AuthenticationError | redis.ResponseError):
                        raise RedisServerError(
                            f"{self.name} on {self.address} refused PING: {error}"
                        ) from error
                time.sleep(POLL)
        finally:
            client.close()
        raise RedisServerError(
            f"{self.name} on {self.address} did not answer PING within {timeout} s "
            f"(last error {last!r}); log tail ({self.log_file}):\n{_tail(self.log_file)}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        self.terminate()
        self.wait(timeout)

    def terminate(self) -> None:
        """Send SIGTERM (and SIGCONT, should it be paused) without waiting."""
        if self.running:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)
                self.process.terminate()

    def wait(self, timeout: float = STOP_TIMEOUT) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        _LIVE.discard(self)

    def kill(self) -> None:
        """SIGKILL: the server dies without any clean shutdown."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        self.process.wait(STOP_TIMEOUT)
        _LIVE.discard(self)

    def restart(self, timeout: float = START_TIMEOUT) -> RedisProcess:
        """Start again on the same port (after ``kill()``/``stop()``; stops it first if needed).

        Without persistence the data is gone, as after a crash of a cache-only Redis.
        """
        if self.running:
            self.stop()
        fixed = self._fixed_port
        self._fixed_port = True
        try:
            return self.start(timeout=timeout, attempts=5)
        finally:
            self._fixed_port = fixed

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung Redis)."""
        if self.process is not None and self.running:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        if self.process is not None and self.running:
            self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- clients

    def connection_kwargs(self) -> dict[str, Any]:
        """redis-py connection arguments for this server's admin account and TLS."""
        kwargs: dict[str, Any] = {"host": self.host, "port": self.port}
        if self.username is not None:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        if self.tls is not None:
            kwargs.update(ssl=True, ssl_ca_certs=str(self.tls.ca_cert))
            if self.tls_auth_clients:
                kwargs.update(
                    ssl_certfile=str(self.tls.client_cert), ssl_keyfile=str(self.tls.client_key)
                )
        return kwargs

    def client(self, **kw: Any) -> redis.Redis:
        """A sync redis-py client to this very server (no cluster/sentinel redirection)."""
        kwargs = self.connection_kwargs()
        kwargs.update(socket_timeout=2.0, socket_connect_timeout=2.0, retry=no_retry())
        kwargs.update(kw)
        if int(kwargs["port"]) in FORBIDDEN_PORTS:
            raise ValueError("refusing to connect to the machine's own Redis")
        return redis.Redis(**kwargs)

    def execute(self, *command: Any, **kw: Any) -> Any:
        """Run one command on a short-lived client."""
        with self.client(**kw) as client:
            return client.execute_command(*command)


# --------------------------------------------------------------------------- deployments


@dataclass
class RedisDeployment:
    """One started deployment: what a ``lock_store:`` section needs, and its processes."""

    mode: DeploymentMode
    host: str
    port: int
    endpoints: list[str] = field(default_factory=list)
    sentinel_service: str = SENTINEL_SERVICE
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    use_ssl: bool = False
    ssl_keyfile: str | None = None
    ssl_certfile: str | None = None
    ssl_ca_certs: str | None = None
    db: int = 1
    processes: list[RedisProcess] = field(default_factory=list)
    master: RedisProcess | None = None
    replica: RedisProcess | None = None
    sentinels: list[RedisProcess] = field(default_factory=list)
    tls_files: TlsFiles | None = None
    started_in: float = 0.0

    # -- configuration for the lock server

    def lock_store_section(self, store_type: str = "redis", **extra: Any) -> dict[str, Any]:
        """The ``lock_store:`` section of an endpoints.yml for this deployment.

        ``extra`` (key_prefix, concurrent_mode, socket_timeout, ...) is added last and wins;
        an extra with value ``None`` removes that key.
        """
        section: dict[str, Any] = {"type": store_type, "host": self.host, "port": self.port}
        if self.mode != "cluster":
            section["db"] = self.db
        optional = {
            "username": self.username,
            "password": self.password,
            "use_ssl": self.use_ssl or None,
            "ssl_keyfile": self.ssl_keyfile,
            "ssl_certfile": self.ssl_certfile,
            "ssl_ca_certs": self.ssl_ca_certs,
        }
        section.update({key: value for key, value in optional.items() if value is not None})
        section["deployment_mode"] = self.mode
        if self.endpoints:
            section["endpoints"] = list(self.endpoints)
        if self.mode == "sentinel":
            section["sentinel_service"] = self.sentinel_service
        section["socket_timeout"] = 2
        for key, value in extra.items():
            if value is None:
                section.pop(key, None)
            else:
                section[key] = value
        return section

    def write_endpoints(
        self, path: str | os.PathLike[str], store_type: str = "redis", **extra: Any
    ) -> Path:
        """Write ``{"lock_store": lock_store_section(...)}`` as YAML to ``path``."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        document = {"lock_store": self.lock_store_section(store_type, **extra)}
        target.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        return target

    # -- clients

    def _auth_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "socket_timeout": 2.0,
            "socket_connect_timeout": 2.0,
            "retry": no_retry(),
        }
        if self.username is not None:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        if self.use_ssl:
            kwargs["ssl"] = True
            for key in ("ssl_keyfile", "ssl_certfile", "ssl_ca_certs"):
                if getattr(self, key) is not None:
                    kwargs[key] = getattr(self, key)
        return kwargs

    def client(self, *, admin: bool = False, **kw: Any) -> redis.Redis | redis.RedisCluster:
        """A sync client with the deployment's credentials (those of ``lock_store_section``).

        standard: ``redis.Redis`` on db ``self.db`` (``admin=True``: the server's admin
        account instead, e.g. the default user next to a restricted ACL user); cluster:
        ``redis.RedisCluster``; sentinel: the current master via ``redis.Sentinel``.
        """
        if self.mode == "cluster":
            kwargs = self._auth_kwargs()
            kwargs.pop("retry")  # RedisCluster retries MOVED/ASK and topology refreshes
            kwargs.update(kw)
            return redis.RedisCluster(host=self.host, port=self.port, **kwargs)
        if self.mode == "sentinel":
            kwargs = self._auth_kwargs()
            kwargs["db"] = self.db
            kwargs.update(kw)
            sentinel = self.sentinel_client()
            master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
                self.sentinel_service, **kwargs
            )
            return master
        if admin:
            return self.processes[0].client(db=self.db, **kw)
        kwargs = self._auth_kwargs()
        kwargs.update(host=self.host, port=self.port, db=self.db)
        kwargs.update(kw)
        return redis.Redis(**kwargs)

    def sentinel_client(self) -> redis.Sentinel:
        """sentinel mode: a ``redis.Sentinel`` over the three sentinels."""
        if self.mode != "sentinel":
            raise RedisServerError(f"a {self.mode} deployment has no sentinels")
        addresses = [(p.host, p.port) for p in self.sentinels]
        timeouts = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
        return redis.Sentinel(  # type: ignore[no-untyped-call]
            addresses, sentinel_kwargs={**timeouts, "retry": no_retry()}
        )

    def masters(self) -> list[RedisProcess]:
        """The processes that are masters now (sentinel: the one the sentinels name)."""
        if self.mode == "sentinel":
            return [self.current_master()]
        return list(self.processes)

    def current_master(self) -> RedisProcess:
        """sentinel mode: the data process the (live) sentinels name as master."""
        address = self._agreed_master_address(require_all=False)
        for process in self._data_processes():
            if (process.host, process.port) == address:
                return process
        raise RedisServerError(f"sentinels name unknown master {address}")

    def flush(self) -> None:
        """FLUSHALL on every master of this deployment (and nothing else)."""
        for process in self.masters():
            process.execute("FLUSHALL")

    # -- sentinel failover

    def _data_processes(self) -> list[RedisProcess]:
        return [p for p in self.processes if p not in self.sentinels]

    def _master_addresses(self) -> list[tuple[str, int] | None]:
        addresses: list[tuple[str, int] | None] = []
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            try:
                with sentinel.client(
                    decode_responses=True, socket_timeout=0.5, socket_connect_timeout=0.5
                ) as client:
                    address = client.sentinel_get_master_addr_by_name(self.sentinel_service)
                addresses.append((str(address[0]), int(address[1])) if address else None)
            except (redis.RedisError, TypeError, ValueError, IndexError):
                addresses.append(None)
        return addresses

    def _agreed_master_address(self, require_all: bool = True) -> tuple[str, int]:
        addresses = self._master_addresses()
        known = [a for a in addresses if a is not None]
        if not known or (require_all and (len(set(known)) != 1 or None in addresses)):
            raise RedisServerError(f"sentinels disagree on the master: {addresses}")
        return max(set(known), key=known.count)

    def failover_by_killing_master(self, timeout: float = 30.0) -> float:
        """SIGKILL the current master and wait for the sentinels to promote the replica.

        Waits until every live sentinel reports another master address and that server
        answers ``ROLE`` as master. Afterwards ``master`` is the promoted server and
        ``replica`` the killed one (``replica.restart()`` brings it back on its port as an
        empty master; the sentinels turn it into a replica, but only some 8 s later: they
        wait 4 hello periods before reconfiguring an instance with the wrong role). Returns
        the seconds it took (typically 2-4 s with down-after-milliseconds 1000).
        """
        if self.mode != "sentinel":
            raise RedisServerError(f"failover needs a sentinel deployment, not {self.mode}")
        old = self.current_master()
        old_address = (old.host, old.port)
        started = time.monotonic()
        old.kill()

        def promoted() -> RedisProcess | None:
            address = self._agreed_master_address(require_all=True)
            if address == old_address:
                return None
            for process in self._data_processes():
                if (process.host, process.port) == address and process.running:
                    role = process.execute("ROLE", decode_responses=True, socket_timeout=0.5)
                    return process if role[0] == "master" else None
            return None

        new = wait_until(promoted, timeout, "the sentinels to promote the replica")
        elapsed = time.monotonic() - started
        self.master, self.replica = new, old
        return elapsed

    # -- lifecycle

    def stop(self) -> None:
        """Stop every process (SIGTERM all at once, then wait; SIGKILL stragglers)."""
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait()

    def __enter__(self) -> RedisDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop_on_error(processes: list[RedisProcess]) -> None:
    for process in processes:
        with contextlib.suppress(Exception):
            process.kill()


def _acl_credentials(rule: str) -> tuple[str, str | None]:
    """The user name and first ``>password`` of an ``ACL SETUSER`` rule line."""
    tokens = rule.split()
    if not tokens:
        raise ValueError("empty ACL rule")
    password = next((t[1:] for t in tokens[1:] if t.startswith(">")), None)
    return tokens[0], password


def start_standalone(
    tmpdir: str | os.PathLike[str] | None = None,
    *,
    password: str | None = None,
    acl_users: list[str] | None = None,
    tls: TlsFiles | None = None,
    tls_auth_clients: bool = False,
) -> RedisDeployment:
    """One redis-server.

    ``password``: ``requirepass`` (the default user's password). ``acl_users``: rule lines
    as for ``ACL SETUSER`` (``"ticketlock on >secret ~app:* &* +@all"``), written as
    ``user`` config lines; the deployment's ``username``/``password`` are those of the first
    rule, and the default user gets ``password`` or, if none, a random admin password (so it
    cannot be used without one). ``tls``: TLS only, with a client certificate required if
    ``tls_auth_clients``.
    """
    started = time.monotonic()
    config: list[str] = []
    admin_password = password
    username: str | None = None
    user_password = password
    if acl_users:
        if admin_password is None:
            admin_password = secrets.token_hex(16)
        config += [f"user {rule}" for rule in acl_users]
        username, user_password = _acl_credentials(acl_users[0])
    if admin_password is not None:
        config.append(f"requirepass {admin_password}")
    if tls is not None and not tls_supported():
        raise RedisServerError(f"{redis_server_path()} was built without TLS support")
    process = RedisProcess(
        tmpdir,
        config=config,
        password=admin_password,
        tls=tls,
        tls_auth_clients=tls_auth_clients,
        name="redis-tls" if tls else "redis",
    )
    process.start()
    deployment = RedisDeployment(
        mode="standard",
        host=process.host,
        port=process.port,
        username=username,
        password=user_password,
        processes=[process],
        tls_files=tls,
    )
    if tls is not None:
        deployment.use_ssl = True
        deployment.ssl_ca_certs = str(tls.ca_cert)
        if tls_auth_clients:
            deployment.ssl_certfile = str(tls.client_cert)
            deployment.ssl_keyfile = str(tls.client_key)
    deployment.started_in = time.monotonic() - started
    return deployment


def _cluster_slot_coverage(process: RedisProcess) -> int:
    slots = process.execute("CLUSTER", "SLOTS", socket_timeout=1.0)
    return sum(int(end) - int(start) + 1 for start, end, *_ in slots)


def _cluster_ready(nodes: list[RedisProcess]) -> bool:
    for node in nodes:
        info = node.execute("CLUSTER", "INFO", decode_responses=True, socket_timeout=1.0)
        if "cluster_state:ok" not in info or f"cluster_known_nodes:{len(nodes)}" not in info:
            return False
        if _cluster_slot_coverage(node) != CLUSTER_SLOTS:
            return False
    return True


def start_cluster(
    tmpdir: str | os.PathLike[str] | None = None, masters: int = 3
) -> RedisDeployment:
    """A Redis Cluster of ``masters`` masters (no replicas) via ``redis-cli --cluster create``.

    Returns once every node reports ``cluster_state:ok``, knows all nodes and sees all 16384
    slots covered in ``CLUSTER SLOTS``.
    """
    if masters < 3:
        raise ValueError("redis-cli --cluster create needs at least 3 masters")
    started = time.monotonic()
    nodes = [RedisProcess(tmpdir, cluster=True, name=f"cluster-{i}") for i in range(masters)]
    try:
        for node in nodes:
            node.start()
        _run(
            [redis_cli_path(), "--cluster", "create", *(n.address for n in nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            timeout=30,
        )  # fmt: skip
        wait_until(lambda: _cluster_ready(nodes), 20, "cluster_state:ok on every node")
    except BaseException:
        _stop_on_error(nodes)
        raise
    return RedisDeployment(
        mode="cluster",
        host=nodes[0].host,
        port=nodes[0].port,
        endpoints=[n.address for n in nodes],
        processes=nodes,
        started_in=time.monotonic() - started,
    )


def _sentinel_config(
    index: int, master: RedisProcess, replica: RedisProcess, ids: list[str], group: list[int]
) -> list[str]:
    name = SENTINEL_SERVICE
    lines = [
        f"sentinel myid {ids[index]}",
        f"sentinel announce-ip {HOST}",
        f"sentinel monitor {name} {master.host} {master.port} 2",
        f"sentinel down-after-milliseconds {name} 1000",
        f"sentinel failover-timeout {name} 5000",
        f"sentinel parallel-syncs {name} 1",
        # Known up front, so that nobody waits for INFO (10 s) or hello (2 s) discovery.
        f"sentinel known-replica {name} {replica.host} {replica.port}",
    ]
    lines += [
        f"sentinel known-sentinel {name} {HOST} {port} {ids[other]}"
        for other, port in enumerate(group)
        if other != index
    ]
    return lines


def _healthy(instance: dict[str, Any]) -> bool:
    return not (instance.get("is_sdown") or instance.get("is_disconnected"))


def _sentinels_ready(deployment: RedisDeployment) -> bool:
    assert deployment.master is not None and deployment.replica is not None
    master = (deployment.master.host, deployment.master.port)
    replica = (deployment.replica.host, deployment.replica.port)
    ports = {s.port for s in deployment.sentinels}
    name = deployment.sentinel_service
    for sentinel in deployment.sentinels:
        with sentinel.client(decode_responses=True, socket_timeout=1.0) as client:
            address = client.sentinel_get_master_addr_by_name(name)
            replicas = client.sentinel_slaves(name)
            others = client.sentinel_sentinels(name)
        if address is None or (address[0], int(address[1])) != master:
            return False
        if not any(
            (r["ip"], int(r["port"])) == replica
            and _healthy(r)
            and r.get("master-link-status") == "ok"
            for r in replicas
        ):
            return False
        if {int(s["port"]) for s in others if _healthy(s)} != ports - {sentinel.port}:
            return False
    return True


def _replica_online(master: RedisProcess) -> bool:
    with master.client(socket_timeout=1.0) as client:
        info = client.info("replication")
    replica = info.get("slave0")
    return (
        info.get("connected_slaves") == 1
        and isinstance(replica, dict)
        and (replica.get("state") == "online")
    )


def start_sentinel(tmpdir: str | os.PathLike[str] | None = None) -> RedisDeployment:
    """A master, one replica and three sentinels (quorum 2) monitoring ``mymaster``.

    Returns once the replica is in sync and every sentinel names the master, knows the
    replica (link ok) and the two other sentinels.
    """
    started = time.monotonic()
    master = RedisProcess(tmpdir, name="sentinel-master", config=[f"replica-announce-ip {HOST}"])
    replica = RedisProcess(tmpdir, name="sentinel-replica")
    sentinels = [RedisProcess(tmpdir, sentinel=True, name=f"sentinel-{i}") for i in range(3)]
    processes = [master, replica, *sentinels]
    try:
        master.start()
        replica.config = [f"replicaof {master.host} {master.port}", f"replica-announce-ip {HOST}"]
        replica.start()
        wait_until(lambda: _replica_online(master), 10, "the replica to sync with the master")
        ids = [secrets.token_hex(20) for _ in sentinels]
        for index, sentinel in enumerate(sentinels):
            group = [s.port for s in sentinels]
            sentinel.config = _sentinel_config(index, master, replica, ids, group)
            sentinel.start()
        deployment = RedisDeployment(
            mode="sentinel",
            host=master.host,
            port=master.port,
            endpoints=[s.address for s in sentinels],
            processes=processes,
            master=master,
            replica=replica,
            sentinels=sentinels,
        )
        wait_until(lambda: _sentinels_ready(deployment), 15, "the sentinels to see each other")
    except BaseException:
        _stop_on_error(processes)
        raise
    deployment.started_in = time.monotonic() - started
    return deployment


__all__ = [
    "CLUSTER_SLOTS",
    "FORBIDDEN_PORTS",
    "HOST",
    "SENTINEL_SERVICE",
    "DeploymentMode",
    "RedisDeployment",
    "RedisProcess",
    "RedisServerError",
    "RedisServerNotFound",
    "TlsFiles",
    "free_port",
    "make_tls_files",
    "no_retry",
    "redis_cli_path",
    "redis_server_path",
    "redis_server_version",
    "start_cluster",
    "start_sentinel",
    "start_standalone",
    "tls_supported",
    "wait_until",
]
