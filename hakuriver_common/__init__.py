"""Shared by host, runner and CLI: configuration, generated protos, ids and parsing."""

__version__ = "0.1.0"
