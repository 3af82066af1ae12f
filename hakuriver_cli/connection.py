"""Config loading, the link to the Host and error reporting shared by the CLI tools.

Every failure ends as one line on stderr and a non-zero exit, never a traceback.

A tool imports this module to declare its commands, so it imports only light modules
itself: the transports (link.py), the generated protos and the TLS and token code are
imported by the functions that open a link (``--help`` never gets there). The config comes
from client_config (no pydantic unless the config needs it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

from hakuriver_cli.call_error import CallError, Status, untrusted_certificate
from hakuriver_cli.link import Link
from hakuriver_common import commands as cli
from hakuriver_common.ids import parse_task_id
from hakuriver_common.limits import MAX_ARRAY_INDEX
from hakuriver_common.service import client_config_or_exit

if TYPE_CHECKING:
    from hakuriver_common.client_config import ClientConfig
    from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb, task_service_pb2_grpc

T = TypeVar("T")
S = TypeVar("S")

TaskIdArgument = Annotated[
    str,
    cli.Argument(
        help="Task id (decimal), or ARRAY_ID_INDEX for one task of a job array.",
        show_default=False,
    ),
]

RequestIdOption = Annotated[
    str,
    cli.Option(
        help="The submission's idempotency key (default: a fresh one): the same id within "
        "24 h answers the tasks it created, creating none twice.",
        show_default=False,
    ),
]

RPC_TIMEOUT_SECONDS = 30.0
# What a call's deadline grows by for each task it works on (an array submitted, a batch
# killed): a 100,000-task array, which can take the Host minutes on a slow disk, outlasted
# the 30 s, and its submitter, told only that the Host did not answer, submitted it again.
BULK_SECONDS_PER_TASK = 0.005
# Attempts at a submission whose answer was lost (``submit_once``), and the pause before the
# first retry (doubled for each next one): about 7 s, a Host restart's time.
SUBMIT_ATTEMPTS = 4
SUBMIT_RETRY_SECONDS = 1.0


def fail(message: str, code: int = 1) -> NoReturn:
    cli.echo(f"error: {message}", err=True)
    raise cli.Exit(code)


def config_or_fail(path: Path | None) -> ClientConfig:
    return client_config_or_exit(path)


def parsed(values: Iterable[str], parse: Callable[[str], T]) -> list[T]:
    """Every value through ``parse``; a ValueError ends the tool with its message (exit 2)."""
    try:
        return [parse(value) for value in values]
    except ValueError as exc:
        fail(str(exc), code=2)


def utf8_or_fail(values: Iterable[str]) -> None:
    """The API carries UTF-8 text: a value the shell gave as other bytes (a Latin-1 file
    name a glob found, say) ends the tool with one line naming it, not a traceback."""
    for value in values:
        try:
            value.encode()
        except UnicodeEncodeError:
            raw = repr(value.encode(errors="surrogateescape"))[1:]  # b'caf\xe9' less its b
            fail(f"{raw} is not UTF-8 text, which is all a request to the Host carries", code=2)


def task_id_or_fail(text: str) -> int:
    [task_id] = parsed([text], parse_task_id)
    return task_id


def task_ref(stub: task_service_pb2_grpc.TaskServiceStub, text: str) -> int:
    """The task named by ``text``: a task id, or ARRAY_ID_INDEX (one task of a job array,
    looked up on the Host)."""
    from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb

    head, sep, index = text.partition("_")
    array_id = task_id_or_fail(head)
    if not sep:
        return array_id
    if not (index.isascii() and index.isdigit()):
        fail(f"{text!r}: expected ARRAY_ID_INDEX, e.g. {array_id}_7", code=2)
    if len(index.lstrip("0")) > len(str(MAX_ARRAY_INDEX)) or int(index) > MAX_ARRAY_INDEX:
        fail(f"{text!r}: an array index is at most {MAX_ARRAY_INDEX:,}", code=2)
    request = tpb.ListTasksRequest(batch_id=array_id, array_index=int(index), limit=1)
    found = unary(stub.ListTasks, request).tasks
    if not found:
        request_batch = tpb.GetBatchRequest(batch_id=array_id)
        batch = found_or_fail(stub.GetBatch, request_batch, f"no job array {array_id}").batch
        if not batch.array:
            fail(
                f"{array_id} is a batch of {batch.size} tasks, not a job array: name its "
                "tasks by their ids (hakuriver.task list --batch "
                f"{array_id}) (NOT_FOUND)"
            )
        fail(f"array {array_id} has no task with index {int(index)} (NOT_FOUND)")
    return found[0].task_id


def on_task_or_batch(
    stub: task_service_pb2_grpc.TaskServiceStub,
    text: str,
    on_task: Callable[[int], T],
    on_batch: Callable[[int], T],
) -> T:
    """``on_task`` for a task id or ARRAY_ID_INDEX; for an id no task has, ``on_batch``
    (task and batch ids come from one sequence, so an id is never both). A batch that does
    not exist either is reported as the task not found."""
    tid = task_ref(stub, text)
    try:
        return on_task(tid)
    except CallError as exc:
        if "_" in text or exc.status is not Status.NOT_FOUND:
            raise
        try:
            return on_batch(tid)
        except CallError as batch_exc:
            raise (exc if batch_exc.status is Status.NOT_FOUND else batch_exc) from None


def _transport_problem(details: str, config: ClientConfig | None, target: str) -> str | None:
    """A TLS mismatch in words, from gRPC's connection error."""
    lowered = details.lower()
    plaintext = config is not None and config.tls.plaintext
    if plaintext and "socket closed" in lowered:
        return (
            f"the host at {target} did not answer plaintext gRPC: it expects TLS "
            "(remove tls.plaintext from the config and set tls.ca_file)"
        )
    if "wrong_version_number" in lowered:
        return (
            f"the host at {target} does not speak TLS: set tls.plaintext = true "
            "(only for a Host on a loopback address)"
        )
    if untrusted_certificate(details) or any(
        word in lowered for word in ("handshake", "ssl", "hostname verif")
    ):
        return (
            f"TLS with the host at {target} failed: its certificate is not signed by "
            "tls.ca_file or does not name this address (tls.server_name)"
        )
    return None


# How gRPC words a call that never reached a Host; any other UNAVAILABLE is the Host's own
# answer (Docker down on the Host, a Runner away) and is shown as it is.
_NOT_REACHED = (
    "failed to connect to all addresses",
    "connections to all backends failing",
    "dns resolution failed",
    "socket closed",
)


# How gRPC and the Connect link word a call that was never sent: nothing of it was stored.
_NEVER_SENT = (
    "failed to connect to all addresses",
    "connections to all backends failing",
    "dns resolution failed",
)


def _never_sent(exc: CallError) -> bool:
    lowered = exc.details.lower()
    return any(lowered.startswith(words) for words in _NEVER_SENT) or (
        "connection refused" in lowered
    )


def _may_have_landed(exc: CallError, config: ClientConfig) -> bool:
    """A call that failed so may have been carried out all the same: its deadline passed,
    its connection broke once it was sent, the Host answered that it is away for now (it
    is stopping, its database is locked). Not a TLS mismatch or a Host never reached."""
    if exc.status in (Status.DEADLINE_EXCEEDED, Status.CANCELLED):
        return True
    if exc.status is not Status.UNAVAILABLE or untrusted_certificate(exc.details):
        return False
    if exc.problem:  # the Connect link's own words: only a connection closed mid-call
        return "closed the connection" in exc.problem
    problem = _transport_problem(exc.details, config, config.host_target)
    return problem is None and not _never_sent(exc)


def _unreachable(details: str) -> bool:
    lowered = details.lower()
    return not details or any(lowered.startswith(words) for words in _NOT_REACHED)


def describe_call_error(exc: CallError, target: str, config: ClientConfig | None = None) -> str:
    if exc.problem:
        return exc.problem
    status, details = exc.status, exc.details
    if status is Status.UNAVAILABLE:
        problem = _transport_problem(details, config, target)
        if problem is not None:
            return problem
    if status is Status.UNAVAILABLE and _unreachable(details):
        return f"cannot reach the host at {target} (is hakuriver.host running?)"
    if status is Status.UNAUTHENTICATED:
        return f"the host refused the API token: {details}"
    if status is Status.DEADLINE_EXCEEDED:
        return f"the host at {target} did not answer in time"
    return f"{details} ({status.name})"


def _grpc_link(
    config: ClientConfig, token: str, reconnect_seconds: float, near_the_end: bool
) -> Link:
    from hakuriver_cli.grpc_link import GrpcLink
    from hakuriver_common.channels import NEAR_THE_END, open_channel
    from hakuriver_common.client_config import TlsSetupError

    options = list(NEAR_THE_END) if near_the_end else []
    if reconnect_seconds > 0:
        backoff_ms = max(1, int(reconnect_seconds * 1000))
        options += [
            ("grpc.initial_reconnect_backoff_ms", backoff_ms),
            ("grpc.min_reconnect_backoff_ms", backoff_ms),
            ("grpc.max_reconnect_backoff_ms", backoff_ms),
        ]
    try:
        return GrpcLink(open_channel(config, token, options))
    except TlsSetupError as exc:
        fail(str(exc), code=2)


def _connect_link(config: ClientConfig, token: str, over_grpc: Callable[[], Link]) -> Link | None:
    """The Connect link to the dashboard's port, when the config has the dashboard on at a
    known port."""
    dashboard = config.dashboard
    if not dashboard.enabled or dashboard.port <= 0:
        return None
    import ssl

    from hakuriver_cli.connect_link import ConnectLink
    from hakuriver_common.addresses import bare
    from hakuriver_common.client_config import ca_file

    tls = None
    if not dashboard.plaintext:
        try:
            tls = ssl.create_default_context(cafile=str(ca_file(config)))
        except (ssl.SSLError, OSError) as exc:
            fail(f"cannot read the CA certificate: {exc}", code=2)
    address = bare(config.network.host_reachable_address)
    return ConnectLink(
        address, dashboard.port, tls, config.tls.server_name or address, token, over_grpc
    )


@contextmanager
def host_link(
    config: ClientConfig, reconnect_seconds: float = 0.0, near_the_end: bool = False
) -> Iterator[Link]:
    """A link to the Host: Connect on the dashboard's port when the config names one, gRPC
    otherwise (and for what Connect does not carry). ``reconnect_seconds`` caps gRPC's wait
    between reconnect attempts after the Host went away (its own backoff grows to minutes);
    ``near_the_end`` for a gRPC log reader with a lag bound (see channels.NEAR_THE_END)."""
    from hakuriver_common.client_config import TlsSetupError
    from hakuriver_common.credentials import CredentialsError, api_token

    try:
        # A Host with auth.authentication = false (loopback only) asks for no token.
        token = api_token(config) if config.auth.authentication else ""
        over_grpc = partial(_grpc_link, config, token, reconnect_seconds, near_the_end)
        link = _connect_link(config, token, over_grpc) or over_grpc()
    except (CredentialsError, TlsSetupError, OSError) as exc:
        fail(str(exc), code=2)
    try:
        yield link
    except CallError as exc:
        fail(describe_call_error(exc, config.host_target, config))
    finally:
        link.close()


def unary(fn: Callable[..., T], request: object, timeout: float | None = None) -> T:
    """Call a unary RPC with a deadline (RPC_TIMEOUT_SECONDS unless given); errors
    propagate to ``host_link``."""
    return fn(request, timeout=RPC_TIMEOUT_SECONDS if timeout is None else timeout)


def bulk_unary(fn: Callable[..., T], request: object, tasks: int, still: str) -> T:
    """``unary`` for a call whose work grows with ``tasks``: a deadline that grows with
    them, and when it passes anyway, one line saying what the Host may ``still`` be doing
    and how to see it (the call goes on there: the Host finishes what it began)."""
    timeout = RPC_TIMEOUT_SECONDS + tasks * BULK_SECONDS_PER_TASK
    try:
        return fn(request, timeout=timeout)
    except CallError as exc:
        if exc.status is not Status.DEADLINE_EXCEEDED:
            raise
        fail(f"the host did not answer within {timeout:g} s, but it may still be {still}")


def submit_once(
    fn: Callable[..., T],
    request: tpb.SubmitTaskRequest,
    config: ClientConfig,
    tasks: int = 1,
    listing: str = "hakuriver.task list --since 1h",
) -> T:
    """SubmitTask (its deadline grows with ``tasks``) with a request_id, a fresh one unless
    given: when its answer is lost (``_may_have_landed``), it is sent again with the same id,
    up to SUBMIT_ATTEMPTS times, and the Host answers with the tasks the first one created,
    never creating them twice. Each retry is noted on stderr; when none answers, or Ctrl-C
    stops a call or the retries, one line says where to look (``listing``) and how to send
    it again."""
    import uuid

    if not request.request_id:
        request.request_id = str(uuid.uuid4())

    def maybe_made(said: str, code: int = 1) -> NoReturn:
        fail(
            f"{said}: the tasks may have been created all the same ({listing} shows them); "
            f"submitting again with --request-id {request.request_id} creates none twice",
            code,
        )

    timeout = RPC_TIMEOUT_SECONDS + tasks * BULK_SECONDS_PER_TASK
    pause = SUBMIT_RETRY_SECONDS
    for attempt in range(1, SUBMIT_ATTEMPTS + 1):
        try:
            return fn(request, timeout=timeout)
        except CallError as exc:
            # Once a call may have landed, a Host not reached (restarting) is waited for.
            away = attempt > 1 and exc.status is Status.UNAVAILABLE and _never_sent(exc)
            if not (away or _may_have_landed(exc, config)):
                raise
            why = describe_call_error(exc, config.host_target, config)
        except KeyboardInterrupt:  # the call was sent: the Host may be storing it
            maybe_made("stopped", cli.INTERRUPTED)
        if attempt < SUBMIT_ATTEMPTS:
            cli.echo(f"{why}: sending the submission again in {pause:g} s", err=True)
            try:
                time.sleep(pause)
            except KeyboardInterrupt:
                maybe_made("stopped", cli.INTERRUPTED)
            pause *= 2
    maybe_made(f"{why}, {SUBMIT_ATTEMPTS} times")


def found_or_fail(fn: Callable[..., T], request: object, missing: str) -> T:
    """``unary``, with NOT_FOUND ending the tool with ``missing`` in words of its own."""
    try:
        return unary(fn, request)
    except CallError as exc:
        if exc.status is not Status.NOT_FOUND:
            raise
        fail(f"{missing} (NOT_FOUND)")


def ask(config: Path | None, stub: Callable[[Link], S], call: Callable[[S], T]) -> T:
    """``call`` on a stub of a link to the Host named by ``config``; one error line if not."""
    with host_link(config_or_fail(config)) as link:
        return call(stub(link))
