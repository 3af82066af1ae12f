"""Typed command-line clients of the Host's public gRPC API."""

import os

# gRPC's C core logs TLS handshake failures and the like on stderr before the call fails;
# the tools print one line of their own instead. Must be set before grpc is imported.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
