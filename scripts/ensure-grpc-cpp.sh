#!/usr/bin/env bash
# For the C++ example client's test: a C++ compiler, Debian's gRPC C++ library and its protoc
# plugin (protobuf-compiler-grpc), and protoc of the same protobuf as the library. Installs
# Debian's packages as root when missing.
set -euo pipefail
source "$(dirname "$0")/lib/apt.sh"
if ! command -v g++ >/dev/null || ! command -v protoc >/dev/null \
    || ! command -v grpc_cpp_plugin >/dev/null || ! pkg-config --exists grpc++ protobuf; then
    apt_install g++ make pkg-config protobuf-compiler protobuf-compiler-grpc libprotobuf-dev \
        libgrpc++-dev
fi
