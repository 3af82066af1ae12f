"""The fuzz driver: a real Host in a thread of its own, every public RPC found from the
descriptors, requests sent as raw bytes, outcomes judged and counted.

The Host (``LocalCluster`` of the unit tier: TLS, tokens, FakeRunners) runs on an event
loop in a background thread, so hypothesis (synchronous) drives it from the test's thread;
each call is a coroutine handed to that loop. Requests travel as bytes (no serializer), so
a valid message and corrupt bytes take the same path.

``public_rpcs()`` reads every ``service`` of every file in ``protos/hakuriver/v1`` from the
generated descriptors: a new RPC is fuzzed without a change here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import importlib
import json
import logging
import ssl
import struct
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import Descriptor

from hakuriver_common.channels import bearer, open_aio_channel
from hakuriver_common.proto.hakuriver.v1 import node_pb2, task_pb2
from hakuriver_common.roles import Role
from hakuriver_common.statuses import TaskStatus
from tests.fake_runner import HOLD, exit_with
from tests.unit.local_cluster import LocalCluster, local_config

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos" / "hakuriver" / "v1"
PROTO_PACKAGE = "hakuriver_common.proto.hakuriver.v1"
UNARY_SECONDS = 10.0
# How long a streaming call is kept open (then cancelled: streams may follow for ever).
STREAM_SECONDS = 0.3
MAX_STREAM_REPLIES = 20
CONNECT_STREAM_SECONDS = 2.0
CORE_ERROR = "Internal error from Core"
# Codes no request may ever get: a bug or a crash in the Host.
BAD_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
BAD_CONNECT_CODES = frozenset({"unknown", "internal", "data_loss", "unimplemented"})
IDENTITIES = ("admin", "user", "runner", "anonymous")
HOST_THREAD = "fuzz-host"
CLIENT_THREAD = "fuzz-client"


@dataclass(frozen=True)
class Rpc:
    path: str  # /hakuriver.v1.TaskService/SubmitTask
    input: Descriptor
    client_streaming: bool
    server_streaming: bool

    @property
    def kind(self) -> str:
        return {
            (False, False): "unary",
            (False, True): "server-stream",
            (True, False): "client-stream",
            (True, True): "bidi",
        }[(self.client_streaming, self.server_streaming)]

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]  # TaskService/SubmitTask


def public_rpcs() -> list[Rpc]:
    """Every method of every service declared in protos/hakuriver/v1/*.proto."""
    found = []
    for proto in sorted(PROTOS.glob("*.proto")):
        module = importlib.import_module(f"{PROTO_PACKAGE}.{proto.stem}_pb2")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                found.append(
                    Rpc(
                        f"/{service.full_name}/{method.name}",
                        method.input_type,
                        method.client_streaming,
                        method.server_streaming,
                    )
                )
    return found


@dataclass(frozen=True)
class Request:
    """One call: the method, who calls, the messages it sends (bytes), and how they were
    made (valid/corrupt per message) for the figures and the report."""

    rpc: Rpc
    who: str
    messages: tuple[bytes, ...]
    made: tuple[str, ...]
    transport: str = "grpc"  # or "connect"

    def describe(self, limit: int = 600) -> str:
        shown = []
        for kind, data in zip(self.made, self.messages, strict=True):
            text = _text_of(self.rpc.input, data) if kind == "valid" else data.hex()
            if len(text) > limit:
                text = text[:limit] + f"... ({len(text)} chars)"
            shown.append(f"{kind}: {text}")
        return f"{self.transport} {self.rpc.path} as {self.who}: " + " | ".join(shown)


def _text_of(descriptor: Descriptor, data: bytes) -> str:
    from google.protobuf import text_format

    from tests.fuzz.strategies import message_class

    message = message_class(descriptor)()
    try:
        message.ParseFromString(data)
    except Exception:
        return data.hex()
    return text_format.MessageToString(message, as_one_line=True)


@dataclass(frozen=True)
class Outcome:
    code: str  # a grpc.StatusCode name, or a Connect code, or HTTP <n>
    details: str
    replies: int
    seconds: float
    bad: bool


@dataclass
class Figures:
    """What a run did: requests and codes per RPC, failures, duration, memory."""

    started: float = field(default_factory=time.monotonic)
    requests: Counter[str] = field(default_factory=Counter)
    codes: Counter[tuple[str, str]] = field(default_factory=Counter)
    made: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[Request, Outcome]] = field(default_factory=list)
    slowest: tuple[float, str] = (0.0, "")
    rss_before: int = 0
    rss_after: int = 0
    # Log lines at WARNING per logger (the rate limits at work).
    warnings: Counter[str] = field(default_factory=Counter)
    # Errors the fuzzer's own client logged (grpc.aio's; not the Host's, not failures).
    client_side: list[str] = field(default_factory=list)

    def add(self, request: Request, outcome: Outcome) -> None:
        key = f"{request.transport}:{request.rpc.name}"
        self.requests[key] += 1
        self.codes[(key, outcome.code)] += 1
        self.made.update(request.made)
        if outcome.bad:
            self.failures.append((request, outcome))
        if outcome.seconds > self.slowest[0]:
            self.slowest = (outcome.seconds, request.describe(200))

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def report(self) -> str:
        seconds = time.monotonic() - self.started
        lines = [
            f"fuzz: {self.total} requests in {seconds:.1f} s ({self.total / seconds:.0f}/s); "
            f"messages: {dict(self.made)}",
            f"memory (RSS): {self.rss_before / 2**20:.0f} MiB before, "
            f"{self.rss_after / 2**20:.0f} MiB after "
            f"({(self.rss_after - self.rss_before) / 2**20:+.0f} MiB)",
            f"slowest call: {self.slowest[0]:.2f} s: {self.slowest[1]}",
            f"{'rpc':<48} {'requests':>8}  codes",
        ]
        for key in sorted(self.requests):
            codes = sorted(
                ((code, n) for (k, code), n in self.codes.items() if k == key),
                key=lambda item: -item[1],
            )
            shown = ", ".join(f"{code} {n}" for code, n in codes)
            lines.append(f"{key:<48} {self.requests[key]:>8}  {shown}")
        lines.append(f"warnings logged: {dict(self.warnings) or 0}")
        for line in self.client_side[:5]:
            lines.append(f"logged by the fuzzer's client (not a failure): {line[:300]}")
        lines.append(f"failures: {len(self.failures)}")
        return "\n".join(lines)


def rss_bytes() -> int:
    """Resident memory after a collection and after returning freed heap to the system
    (malloc_trim), so that only memory still in use counts."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


class LogRecorder(logging.Handler):
    """Every record at WARNING or above, from any logger, in any thread."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self._lock_records = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_records:
            self.records.append(record)

    def problems(self, client_side: bool = False) -> list[str]:
        """Tracebacks and errors: records with exc_info, and ERROR or above; those of the
        Host (any thread but the fuzzer's client loop), or with ``client_side`` only the
        client's."""
        found = []
        for record in self.records:
            if (record.threadName == CLIENT_THREAD) != client_side:
                continue
            if record.exc_info or record.levelno >= logging.ERROR:
                text = record.getMessage()[:300]
                trace = ""
                if record.exc_info and record.exc_info[1] is not None:
                    exc = record.exc_info[1]
                    tb = exc.__traceback__
                    while tb is not None and tb.tb_next is not None:
                        tb = tb.tb_next
                    where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else "?"
                    trace = f" [traceback: {type(exc).__name__}: {str(exc)[:200]} at {where}]"
                found.append(f"{record.levelname} {record.name}: {text}{trace}")
        return found

    def warnings_by_logger(self) -> Counter[str]:
        return Counter(r.name for r in self.records if r.levelno == logging.WARNING)


class HostThread:
    """A LocalCluster on an event loop in a daemon thread."""

    def __init__(self, root: Path, **sections: dict[str, Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=HOST_THREAD, daemon=True)
        self.thread.start()
        # The fuzzer's own gRPC client, on a loop of its own: what it logs is told apart.
        self.client_loop = asyncio.new_event_loop()
        self.client_thread = threading.Thread(
            target=self.client_loop.run_forever, name=CLIENT_THREAD, daemon=True
        )
        self.client_thread.start()
        self.channel: grpc.aio.Channel | None = None
        # Tasks still on the Host's loop after it stopped (cancelled then).
        self.leftover: list[str] = []
        self.cluster = LocalCluster(local_config(root, **sections))
        self.tokens: dict[str, str | None] = {}
        self.task_ids: list[int] = []
        self.hostnames: list[str] = []

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run ``coro`` on the Host's loop."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run_client(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        """Run ``coro`` on the fuzzer's client loop."""
        return asyncio.run_coroutine_threadsafe(coro, self.client_loop).result(timeout)

    async def _open_channel(self) -> None:
        # No credential interceptors: each call sends its own metadata, nothing between.
        self.channel = open_aio_channel(self.cluster.config)

    async def _close_channel(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    # ----- set-up ----------------------------------------------------------------------

    def start(self) -> None:
        self.run(self._start())
        self.run_client(self._open_channel())

    async def _start(self) -> None:
        cluster = self.cluster
        await cluster.start_host()
        gpus = [node_pb2.Gpu(index=i, uuid=f"GPU-{i}", name="Fake") for i in range(2)]
        await cluster.add_runner("fuzz-a", cores=8, answer=exit_with(0, stdout=b"out\n"))
        await cluster.add_runner("fuzz-b", cores=4, gpus=gpus, answer=HOLD)
        self.hostnames = ["fuzz-a", "fuzz-b"]
        user = await cluster.add_user("fuzzer", Role.USER)
        self.tokens = {
            "admin": cluster.admin_token,
            "user": user.token,
            "runner": cluster.config.auth.join_token,
            "anonymous": None,
        }
        done = await cluster.submit("done", targets=[task_pb2.Target(hostname="fuzz-a")])
        held = await cluster.submit("held", targets=[task_pb2.Target(hostname="fuzz-b")])
        mine = await user.tasks.SubmitTask(
            _submit("mine", targets=[task_pb2.Target(hostname="fuzz-b")]), timeout=5
        )
        self.task_ids = [done.task_id, held.task_id, mine.tasks[0].task_id]
        await cluster.wait_status(done.task_id)
        await cluster.wait_status(held.task_id, TaskStatus.RUNNING)

    def stop(self) -> None:
        try:
            self.run_client(self._close_channel())
            self.run(self.cluster.close())
            self.leftover = self.run(_cancel_leftovers())
        finally:
            for loop, thread in ((self.client_loop, self.client_thread), (self.loop, self.thread)):
                loop.call_soon_threadsafe(loop.stop)
                thread.join(10)
                loop.close()

    # ----- calls -----------------------------------------------------------------------

    def call(self, request: Request) -> Outcome:
        if request.transport == "connect":
            return self._connect_call(request)
        return self.run_client(self.call_grpc(request), timeout=UNARY_SECONDS + 30)

    async def call_grpc(self, request: Request) -> Outcome:
        """One gRPC call (on the client loop)."""
        channel = self.channel
        assert channel is not None
        token = self.tokens[request.who]
        metadata = bearer(token) if token else None
        rpc = request.rpc
        start = time.monotonic()
        replies = 0
        limited = rpc.server_streaming or rpc.client_streaming
        timeout = STREAM_SECONDS if limited else UNARY_SECONDS
        code, details = grpc.StatusCode.OK, ""
        try:
            if rpc.kind == "unary":
                method = channel.unary_unary(rpc.path)
                await method(request.messages[0], timeout=timeout, metadata=metadata)
                replies = 1
            elif rpc.kind == "server-stream":
                call = channel.unary_stream(rpc.path)(
                    request.messages[0], timeout=timeout, metadata=metadata
                )
                replies = await _drain(call)
            elif rpc.kind == "client-stream":
                call = channel.stream_unary(rpc.path)(timeout=timeout, metadata=metadata)
                await _write_all(call, request.messages)
                await call
                replies = 1
            else:
                call = channel.stream_stream(rpc.path)(timeout=timeout, metadata=metadata)
                writer = asyncio.ensure_future(_write_all(call, request.messages))
                try:
                    replies = await _drain(call)
                finally:
                    writer.cancel()
                    await asyncio.gather(writer, return_exceptions=True)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
        seconds = time.monotonic() - start
        if rpc.client_streaming and code is grpc.StatusCode.INTERNAL and details == CORE_ERROR:
            # The Host ended the call while the client was still writing: grpc.aio's client
            # then reports this instead of the Host's status (grpc/grpc#36066). Not the
            # Host's answer; a Host that did answer INTERNAL logged an ERROR (checked).
            return Outcome("INTERNAL (client side, grpc#36066)", details, replies, seconds, False)
        bad = code in BAD_CODES or (code is grpc.StatusCode.DEADLINE_EXCEEDED and not limited)
        return Outcome(code.name, details, replies, seconds, bad)

    def _connect_call(self, request: Request) -> Outcome:
        """One request to the dashboard's Connect API (blocking; from the test's thread)."""
        server = self.cluster.server
        assert server is not None
        rpc = request.rpc
        body = request.messages[0]
        content_type = "application/proto"
        if request.made[0] == "json":
            content_type = "application/json"
        if rpc.server_streaming:
            content_type = "application/connect+" + (
                "json" if request.made[0] == "json" else "proto"
            )
            body = struct.pack(">BI", 0, len(body)) + body
        headers = {"Content-Type": content_type}
        token = self.tokens[request.who]
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = f"https://127.0.0.1:{server.dashboard_port}{rpc.path}"
        context = ssl.create_default_context(cafile=str(self.cluster.config.tls.ca_file))
        start = time.monotonic()
        wait = CONNECT_STREAM_SECONDS if rpc.server_streaming else UNARY_SECONDS
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, data=body, headers=headers),
                timeout=wait,
                context=context,
            ) as answer:
                status, data = answer.status, answer.read()
        except urllib.error.HTTPError as refused:
            status, data = refused.code, refused.read()
        except (TimeoutError, urllib.error.URLError) as exc:
            # A stream that follows (its body parsed after all), or a Host too busy to
            # answer within the wait: bad for a unary call, not for a stream.
            seconds = time.monotonic() - start
            if isinstance(exc, urllib.error.URLError) and not isinstance(exc.reason, TimeoutError):
                raise
            return Outcome("client timeout", str(exc), 0, seconds, not rpc.server_streaming)
        seconds = time.monotonic() - start
        code = _connect_code(status, data, rpc.server_streaming)
        # 503 is Connect's unavailable; a 5xx without a Connect error body is a crash.
        bad = code in BAD_CONNECT_CODES or (status >= 500 and code.startswith("HTTP"))
        return Outcome(code, data[:300].decode(errors="replace"), 1, seconds, bad)


def _connect_code(status: int, data: bytes, streaming: bool) -> str:
    """The Connect error code of an answer ("ok" for a success)."""
    try:
        if streaming and status == 200:
            end = b""
            while len(data) >= 5:
                flags, size = struct.unpack(">BI", data[:5])
                if flags & 0x02:
                    end = data[5 : 5 + size]
                data = data[5 + size :]
            error = json.loads(end or b"{}").get("error")
            return str(error["code"]) if error else "ok"
        if status == 200:
            return "ok"
        return str(json.loads(data).get("code", f"HTTP {status}"))
    except (ValueError, KeyError, AttributeError):
        return f"HTTP {status}"


async def _cancel_leftovers() -> list[str]:
    """Cancel the tasks still on the Host's loop after it stopped; their names."""
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    await asyncio.sleep(0.1)  # let cancelled ones finish unwinding
    left = [t for t in left if not t.done()]
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)
    return [repr(t)[:200] for t in left]


async def _write_all(call: Any, messages: tuple[bytes, ...]) -> None:
    """Send the messages and half-close; stop quietly once the Host has ended the call
    (its status is what the reader reports)."""
    try:
        for message in messages:
            await call.write(message)
        await call.done_writing()
    except Exception:  # InvalidStateError, UsageError, cygrpc's ExecuteBatchError...
        return


async def _drain(call: Any) -> int:
    """Read a stream's replies (at most MAX_STREAM_REPLIES, then cancel); its count. A
    stream ended by our own deadline or cancellation is fine (streams may follow)."""
    replies = 0
    try:
        async for _ in call:
            replies += 1
            if replies >= MAX_STREAM_REPLIES:
                call.cancel()
                break
    except grpc.aio.AioRpcError as exc:
        if exc.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            raise
        if exc.code() is grpc.StatusCode.CANCELLED and not call.cancelled():
            raise
    return replies


def _submit(command: str, **fields: Any) -> Any:
    from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb

    return tpb.SubmitTaskRequest(command=command, **fields)
