"""Shared benchmark helpers, and the no-op RPC baseline.

The baseline is the gRPC health service's ``Check``: a unary call that does no
work, on the same server process and over the same kind of channel (in fact the
very channel) that ``AsyncLockClient`` uses. Every other benchmark prints its
figures beside this baseline measured in the same run, because the machine (two
cores shared by client and server) is too noisy for absolute numbers to compare
across runs.

Run alone: ``python -m bench.baseline`` prints the no-op round trip (median, p99)
and the no-op rate at several concurrencies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast
from unittest import mock

import grpc
import psutil  # type: ignore[import-untyped,unused-ignore]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ticketlock import AsyncLockClient
from ticketlock.client import DEFAULT_TIMEOUT

from harness.server import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
SERVER_ARGS = ("--log-level", "warning")
MIB = 1024 * 1024

# -- statistics ------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between ranks.

    Same definition as ``numpy.percentile``'s default: p50 of an even count is the
    mean of the two middle samples.
    """
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100 or math.isnan(q):
        raise ValueError(f"percentile must be within 0..100, not {q}")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Distribution:
    """Summary of latency samples, in seconds."""

    count: int
    p50: float
    p90: float
    p99: float
    maximum: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Distribution:
        return cls(
            count=len(samples),
            p50=percentile(samples, 50),
            p90=percentile(samples, 90),
            p99=percentile(samples, 99),
            maximum=max(samples),
        )


def ms(seconds: float) -> str:
    """Seconds as milliseconds, with precision that suits the magnitude."""
    value = seconds * 1000
    if value < 10:
        return f"{value:.3f} ms"
    if value < 1000:
        return f"{value:.1f} ms"
    return f"{value:,.0f} ms"


def per_second(rate: float) -> str:
    return f"{rate:,.0f}/s"


def mib(size: float) -> str:
    return f"{size / MIB:,.1f} MiB"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# -- memory --------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (psutil)."""
    return int(psutil.Process(pid).memory_info().rss)


class RssSampler:
    """Samples a process's RSS in a background thread and keeps the peak.

    A thread, not an asyncio task, so that a busy event loop in the benchmark
    cannot make it miss the peak.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._peak = 0
        self._last = 0
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> int:
        try:
            rss = int(self._process.memory_info().rss)
        except psutil.Error:
            return self._last
        with self._lock:
            self._last = rss
            self._peak = max(self._peak, rss)
        return rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval)

    @property
    def peak(self) -> int:
        self._sample()
        with self._lock:
            return self._peak

    def reset_peak(self) -> int:
        """Start a new peak from the current RSS, which is returned."""
        rss = self._sample()
        with self._lock:
            self._peak = rss
        return rss

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- servers and channels --------------------------------------------------------


Measured = TypeVar("Measured")


@contextlib.contextmanager
def server(extra_args: Sequence[str] = ()) -> Iterator[ServerProcess]:
    """A fresh ``ticketlock-server`` process: in-memory store, loopback, warnings only."""
    with ServerProcess([*SERVER_ARGS, *extra_args]) as process:
        yield process


def run_bounded(name: str, timeout: float, measurement: Coroutine[Any, Any, Measured]) -> Measured:
    """Run ``measurement`` in a new event loop; exit with a message after ``timeout`` seconds.

    ``name``: the benchmark's module under ``bench``, for the message.
    """
    try:
        return asyncio.run(asyncio.wait_for(measurement, timeout))
    except asyncio.TimeoutError:
        raise SystemExit(f"bench.{name}: aborted after --timeout {timeout} s") from None


def run_on_server(
    name: str,
    timeout: float,
    measure: Callable[[ServerProcess], Coroutine[Any, Any, Measured]],
    server_args: Sequence[str] = (),
) -> Measured:
    """``measure`` against a fresh server process, aborted after ``timeout`` seconds."""
    with server(server_args) as process:
        return run_bounded(name, timeout, measure(process))


def channel_of(client: AsyncLockClient) -> grpc.aio.Channel:
    """The client's own channel, so that the baseline uses exactly the same one.

    ``AsyncLockClient`` has no public accessor; benchmarks read the attribute.
    """
    channel: grpc.aio.Channel = client._channel
    return channel


class Noop:
    """One health ``Check`` call: the no-op unary RPC, with the client's deadline."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = health_pb2_grpc.HealthStub(channel)
        self._request = health_pb2.HealthCheckRequest()

    async def __call__(self) -> None:
        await self._stub.Check(self._request, timeout=DEFAULT_TIMEOUT)


# -- measuring -----------------------------------------------------------------


async def latencies(op: Callable[[], Awaitable[Any]], count: int) -> list[float]:
    """Run ``op`` ``count`` times one after the other; each duration in seconds."""
    samples: list[float] = []
    for _ in range(count):
        start = time.perf_counter()
        await op()
        samples.append(time.perf_counter() - start)
    return samples


@dataclass(frozen=True, slots=True)
class Rate:
    operations: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.operations / self.seconds if self.seconds > 0 else 0.0


async def measure_rate(
    op: Callable[[int], Awaitable[Any]], tasks: int, duration: float, warmup: float = 0.0
) -> Rate:
    """Run ``op(sequence_number)`` in ``tasks`` concurrent loops for ``duration`` seconds.

    Each loop starts a new operation until the deadline; the rate is the
    operations completed over the time until the last one finished. Sequence
    numbers are unique within one call, warm-up included, so that operations
    can use distinct ids.
    """
    sequence = itertools.count()

    async def loops(seconds: float) -> Rate:
        done = 0
        start = time.perf_counter()
        deadline = start + seconds

        async def loop() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await op(next(sequence))
                done += 1

        await asyncio.gather(*(loop() for _ in range(tasks)))
        return Rate(done, time.perf_counter() - start)

    if warmup > 0:
        await loops(warmup)
    return await loops(duration)


# -- counting calls and messages -----------------------------------------------


@dataclass(slots=True)
class MethodCounts:
    calls: int = 0
    sent: int = 0  # request messages, client -> server
    received: int = 0  # response messages, server -> client


@dataclass(slots=True)
class CallCounter:
    """Counts RPCs and messages per method, through client interceptors."""

    methods: dict[str, MethodCounts] = field(default_factory=dict)

    def of(self, method: Any) -> MethodCounts:
        name = method.decode() if isinstance(method, bytes) else str(method)
        name = name.rsplit("/", 1)[-1]
        return self.methods.setdefault(name, MethodCounts())

    def reset(self) -> None:
        self.methods.clear()

    @property
    def total(self) -> MethodCounts:
        return MethodCounts(
            calls=sum(m.calls for m in self.methods.values()),
            sent=sum(m.sent for m in self.methods.values()),
            received=sum(m.received for m in self.methods.values()),
        )

    def interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        # grpc-stubs types ClientInterceptor as a placeholder that needs a cast.
        return [
            cast(grpc.aio.ClientInterceptor, _CountUnaryUnary(self)),
            cast(grpc.aio.ClientInterceptor, _CountUnaryStream(self)),
            cast(grpc.aio.ClientInterceptor, _CountStreamStream(self)),
        ]


async def _counted_responses(call: Any, counts: MethodCounts) -> AsyncIterator[Any]:
    async for response in call:
        counts.received += 1
        yield response


async def _counted_requests(requests: Any, counts: MethodCounts) -> AsyncIterator[Any]:
    if hasattr(requests, "__aiter__"):
        async for request in requests:
            counts.sent += 1
            yield request
    else:
        for request in requests:
            counts.sent += 1
            yield request


if TYPE_CHECKING:  # generic in grpc-stubs only
    _UnaryUnaryInterceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStreamInterceptor = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamStreamInterceptor = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnaryInterceptor = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStreamInterceptor = grpc.aio.UnaryStreamClientInterceptor
    _StreamStreamInterceptor = grpc.aio.StreamStreamClientInterceptor


class _CountUnaryUnary(_UnaryUnaryInterceptor):
    def __init__(self, counter: CallCounter) -> None:
        self._counter = counter

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        counts = self._counter.of(details.method)
        counts.calls += 1
        counts.sent += 1
        call = await continuation(details, request)
        response = await call
        counts.received += 1
        return response


class _CountUnaryStream(_UnaryStreamInterceptor):
    def __init__(self, counter: CallCounter) -> None:
        self._counter = counter

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        counts = self._counter.of(details.method)
        counts.calls += 1
        counts.sent += 1
        return _counted_responses(await continuation(details, request), counts)


class _CountStreamStream(_StreamStreamInterceptor):
    def __init__(self, counter: CallCounter) -> None:
        self._counter = counter

    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        counts = self._counter.of(details.method)
        counts.calls += 1
        call = await continuation(details, _counted_requests(request_iterator, counts))
        return _counted_responses(call, counts)


@contextlib.contextmanager
def intercepted_channels(interceptors: Sequence[grpc.aio.ClientInterceptor]) -> Iterator[None]:
    """Make ``grpc.aio.insecure_channel`` add ``interceptors`` to the channels it builds.

    ``AsyncLockClient`` builds its channel itself and takes no interceptors; built
    inside this block it gets them, with its own options unchanged. (Interceptors
    route stream writes through a queue, so counting clients are for counting,
    not for timing.)
    """
    original = grpc.aio.insecure_channel

    def patched(
        target: str,
        options: Any = None,
        compression: Any = None,
        interceptors_: Sequence[grpc.aio.ClientInterceptor] | None = None,
    ) -> grpc.aio.Channel:
        return original(target, options, compression, [*interceptors, *(interceptors_ or ())])

    with mock.patch.object(grpc.aio, "insecure_channel", patched):
        yield


# -- reporting -----------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table with padded columns."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), separator, *(line(r) for r in rows)])


def python_command() -> str:
    executable = Path(sys.executable)
    with contextlib.suppress(ValueError):
        return str(executable.relative_to(ROOT))
    return str(executable)


def command_line(module: str, parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The command that reproduces a run, every option spelled out."""
    words = ["cd", str(ROOT), "&&", python_command(), "-m", module]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest)
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            if value:
                words.append(flag)
        elif isinstance(value, list | tuple):
            words.append(flag)
            words.extend(str(v) for v in value)
        else:
            words.extend([flag, str(value)])
    return " ".join(w if w == "&&" else shlex.quote(w) for w in words)


def source_fingerprint() -> str:
    """Which code was measured: the git commit, and a hash of the working tree's sources.

    The hash covers the client and server packages as they are on disk, so that
    figures taken from an uncommitted tree can still be matched to their code.
    """
    digest = hashlib.sha256()
    for path in sorted([*ROOT.glob("client/ticketlock/**/*.py"), *ROOT.glob("server/**/*.py")]):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "client", "server"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", ""
    state = " + uncommitted changes" if dirty else ""
    return f"commit {commit}{state}, sources sha256 {digest.hexdigest()[:12]}"


def environment(servers: str = "in-memory store") -> str:
    """The machine, the versions, the code measured; ``servers``: what the servers ran on."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"Python {platform.python_version()}, grpcio {grpc.__version__}, "
        f"{os.cpu_count()} CPUs ({platform.machine()}), load average {load}; "
        f"server: {servers}, loopback TCP, client and server on the same machine; "
        f"code: {source_fingerprint()}"
    )


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be zero or more, not {text}")
    return value


def add_timeout(p: argparse.ArgumentParser, default: float = 600.0) -> None:
    """The ``--timeout`` option of every benchmark (see ``run_bounded``)."""
    p.add_argument(
        "--timeout", type=positive_float, default=default, help="abort after this many seconds"
    )


def benchmark_main(
    argv: Sequence[str] | None,
    parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace], Measured],
    report: Callable[[Measured], str],
    correct: Callable[[Measured], bool] = lambda _: True,
) -> int:
    """A benchmark module's ``main``: parse, run, print the report; 1 if not ``correct``."""
    result = run(parser().parse_args(argv))
    print(report(result), flush=True)
    return 0 if correct(result) else 1


# -- the baseline benchmark on its own -------------------------------------------


@dataclass(frozen=True, slots=True)
class BaselineResult:
    latency: Distribution
    rates: dict[int, float]  # concurrent tasks -> median calls/s over the rounds
    command: str


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.baseline",
        description="No-op unary RPC baseline: health Check round trip and rate.",
    )
    p.add_argument("--calls", type=positive_int, default=2000, help="sequential calls timed")
    p.add_argument(
        "--concurrency", type=positive_int, nargs="+", default=[1, 16, 64], help="task counts"
    )
    p.add_argument("--duration", type=positive_float, default=1.0, help="seconds per rate run")
    p.add_argument("--rounds", type=positive_int, default=3, help="rate runs per concurrency")
    return p


async def measure(target: str, args: argparse.Namespace) -> tuple[Distribution, dict[int, float]]:
    async with AsyncLockClient(target) as client:
        noop = Noop(channel_of(client))
        await latencies(noop, min(200, args.calls))  # warm-up: connection, code paths
        latency = Distribution.of(await latencies(noop, args.calls))
        rates: dict[int, list[float]] = {c: [] for c in args.concurrency}
        for _ in range(args.rounds):
            for tasks in args.concurrency:
                rate = await measure_rate(lambda _: noop(), tasks, args.duration, 0.1)
                rates[tasks].append(rate.per_second)
    return latency, {c: median(r) for c, r in rates.items()}


def run(args: argparse.Namespace) -> BaselineResult:
    with server() as process:
        latency, rates = asyncio.run(measure(process.target, args))
    return BaselineResult(latency, rates, command_line("bench.baseline", parser(), args))


def report(result: BaselineResult) -> str:
    rows = [
        ["no-op Check round trip, sequential", ms(result.latency.p50), ms(result.latency.p99)],
        *(
            [
                f"no-op Check rate, {tasks} concurrent task{'' if tasks == 1 else 's'}",
                per_second(rate),
                "",
            ]
            for tasks, rate in result.rates.items()
        ),
    ]
    return "\n".join(
        [
            "## No-op unary RPC baseline (grpc.health.v1.Health/Check, AsyncLockClient channel)",
            "",
            table(["figure", "median", "p99"], rows),
            "",
            f"({result.latency.count} sequential calls; rates are medians of rounds)",
            environment(),
            f"reproduce: {result.command}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    return benchmark_main(argv, parser, run, report)


if __name__ == "__main__":
    sys.exit(main())
