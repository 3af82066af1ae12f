"""What the fuzzer sends: a strategy of ``Request``s over every public RPC.

Each RPC is drawn equally often. A call goes as the admin most of the time (past the
authorisation, into the code), else as a plain user, a Runner (the join token) or nobody.
Unary requests are one message, valid or corrupt; streams send up to five. The runner
protocol (``RunnerService/Connect``) mostly starts with a register message with hostile
fields, as a Runner must, then random stream messages (heartbeats, task states, log
chunks with hostile offsets, tunnel messages), some corrupt. Services the dashboard serves
are also called over the Connect protocol (HTTP), with protobuf or JSON bodies, valid or
not.
"""

from __future__ import annotations

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from hypothesis import strategies as st

from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb
from tests.fuzz.driver import Request, Rpc
from tests.fuzz.strategies import Hints, corrupt, encodings, message_class, messages

# Served by gRPC only (see docs/api.md): the Runners' stream and the bidirectional shell.
GRPC_ONLY = ("/hakuriver.v1.RunnerService/", "/hakuriver.v1.ShellService/")
MAX_STREAM_MESSAGES = 5
# Bodies no JSON parser takes for a request message.
BAD_JSON = (
    b"",
    b"{",
    b"\xff\xfe",
    b"[]",
    b"null",
    b'"x"',
    b"1e999999",
    b'{"noSuchField": 1}',
    b'{"taskId": {}}',
    b'{"limit": "many"}',
    b'{"taskId": "9999999999999999999999"}',
    b'{"statuses": ["NO_SUCH_STATUS"]}',
    b'{"submittedAfter": "10000-01-01T00:00:00Z"}',
    b"[" * 10_000,
)


def _who(rpc: Rpc) -> st.SearchStrategy[str]:
    if rpc.path.startswith("/hakuriver.v1.RunnerService/"):
        return st.sampled_from(["runner"] * 6 + ["admin", "user", "anonymous"])
    return st.sampled_from(["admin"] * 5 + ["user"] * 3 + ["runner", "anonymous"])


def _stream_messages(rpc: Rpc, hints: Hints) -> st.SearchStrategy[list[tuple[str, bytes]]]:
    one = st.one_of(
        messages(rpc.input, hints=hints).map(lambda m: ("valid", m.SerializeToString())),
        messages(rpc.input, hints=hints).map(lambda m: ("valid", m.SerializeToString())),
        encodings(rpc.input, hints),
    )
    rest = st.lists(one, max_size=MAX_STREAM_MESSAGES)
    if rpc.input.full_name != rpb.ConnectRequest.DESCRIPTOR.full_name:
        return rest
    register = messages(rpb.RegisterRunner.DESCRIPTOR, hints=hints).map(
        lambda r: ("valid", rpb.ConnectRequest(register=r).SerializeToString())
    )
    return st.one_of(
        st.tuples(register, rest).map(lambda pair: [pair[0], *pair[1]]),
        st.tuples(register, rest).map(lambda pair: [pair[0], *pair[1]]),
        st.tuples(register, rest).map(lambda pair: [pair[0], *pair[1]]),
        rest,
    )


def _grpc_requests(rpc: Rpc, hints: Hints) -> st.SearchStrategy[Request]:
    if rpc.client_streaming:
        sent = _stream_messages(rpc, hints)
    else:
        sent = encodings(rpc.input, hints).map(lambda one: [one])
    return st.builds(
        lambda who, pairs: Request(
            rpc, who, tuple(d for _, d in pairs), tuple(k for k, _ in pairs), "grpc"
        ),
        _who(rpc),
        sent,
    )


def _connect_requests(rpc: Rpc, hints: Hints) -> st.SearchStrategy[Request]:
    """Bodies for the Connect API. A server stream gets bodies that cannot parse only (a
    valid one may follow a log for ever)."""
    bad_json = st.sampled_from(BAD_JSON).map(lambda body: ("json", body))
    if rpc.server_streaming:
        failing = [b for b in BAD_JSON if not _parses(b, rpc.input)]
        body = st.sampled_from(failing).map(lambda data: ("json", data))
    else:
        body = st.one_of(
            bad_json,
            corrupt(rpc.input, hints).map(lambda data: ("corrupt", data)),
            messages(rpc.input, hints=hints).map(lambda m: ("valid", m.SerializeToString())),
        )
    return st.builds(
        lambda who, made: Request(rpc, who, (made[1],), (made[0],), "connect"),
        _who(rpc),
        body,
    )


def _parses(body: bytes, descriptor: Descriptor) -> bool:
    try:
        json_format.Parse(body, message_class(descriptor)())
    except Exception:
        return False
    return True  # e.g. "[]", which protobuf's JSON parser takes for an empty message


def requests_for(rpc: Rpc, hints: Hints, connect_share: int = 5) -> st.SearchStrategy[Request]:
    """Any request to ``rpc``; one in ``connect_share`` goes over the Connect protocol if
    the dashboard serves the RPC."""
    grpc_calls = _grpc_requests(rpc, hints)
    if rpc.client_streaming or rpc.path.startswith(GRPC_ONLY):
        return grpc_calls
    return st.one_of(*([grpc_calls] * (connect_share - 1)), _connect_requests(rpc, hints))
