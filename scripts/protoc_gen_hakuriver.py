"""buf plugin: generate Python, gRPC and mypy stubs with the protoc bundled in grpcio-tools,
and the Connect protocol's server interfaces with protoc-gen-connect-python.

buf hands us the parsed files as a CodeGeneratorRequest; we replay them through grpc_tools
(so generated code matches the installed protobuf runtime), hand the same request to the
Connect plugin, and rewrite the absolute ``hakuriver.v1`` imports of both so the stubs live
under ``hakuriver_common.proto``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2

PACKAGE_PREFIX = "hakuriver_common.proto."
IMPORT_RE = re.compile(r"^(from|import) hakuriver\.v1\b", re.MULTILINE)


def rewrite(text: str) -> str:
    return IMPORT_RE.sub(lambda m: f"{m.group(1)} {PACKAGE_PREFIX}hakuriver.v1", text)


def connect_files(raw_request: bytes) -> plugin_pb2.CodeGeneratorResponse:
    """The Connect plugin's answer to the same request (it installs beside this Python)."""
    plugin = Path(sys.executable).parent / "protoc-gen-connect-python"
    result = subprocess.run([str(plugin)], input=raw_request, capture_output=True, check=True)
    return plugin_pb2.CodeGeneratorResponse.FromString(result.stdout)


def main() -> None:
    raw_request = sys.stdin.buffer.read()
    request = plugin_pb2.CodeGeneratorRequest.FromString(raw_request)
    response = plugin_pb2.CodeGeneratorResponse()
    response.supported_features = plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        fds = descriptor_pb2.FileDescriptorSet(file=request.proto_file)
        (tmp_path / "set.pb").write_bytes(fds.SerializeToString())
        out = tmp_path / "out"
        out.mkdir()
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--descriptor_set_in={tmp_path / 'set.pb'}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--mypy_out={out}",
            f"--mypy_grpc_out={out}",
            *request.file_to_generate,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            response.error = result.stderr
        else:
            for directory in [out, *sorted(p for p in out.rglob("*") if p.is_dir())]:
                (directory / "__init__.py").touch()
            for path in sorted(out.rglob("*")):
                if path.is_file():
                    generated = response.file.add()
                    generated.name = str(path.relative_to(out))
                    generated.content = rewrite(path.read_text())
            connect = connect_files(raw_request)
            if connect.error:
                response.error = connect.error
            for file in connect.file:
                generated = response.file.add()
                generated.name = file.name
                generated.content = rewrite(file.content)
    sys.stdout.buffer.write(response.SerializeToString())


if __name__ == "__main__":
    main()
