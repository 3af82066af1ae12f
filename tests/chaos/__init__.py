"""Chaos tooling: a loopback TCP proxy that cuts or stalls a connection, a stream of
verifiable tasks, fault scenarios and the checks of their outcomes (tests/e2e/test_chaos.py
runs the short version, ``make chaos`` the full one: python -m tests.chaos)."""
