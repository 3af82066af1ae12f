"""Typed command-line clients of the Host's public gRPC API."""
