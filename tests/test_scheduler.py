"""Placement bookkeeping: best fit, priorities, never-fits messages, release."""

from __future__ import annotations

from hypothesis import given, strategies as st

from hakuriver_host.scheduler import Request, Scheduler


def make(*nodes: tuple[str, int, int]) -> Scheduler:
    scheduler = Scheduler()
    for name, cores, memory in nodes:
        scheduler.upsert_node(name, cores, memory)
    return scheduler


def test_best_fit_prefers_the_tightest_node() -> None:
    scheduler = make(("big", 16, 64), ("small", 4, 64))
    assert scheduler.choose(Request(1, 2, 0)) == "small"
    assert scheduler.choose(Request(2, 8, 0)) == "big"


def test_offline_nodes_and_targets() -> None:
    scheduler = make(("a", 4, 10), ("b", 4, 10))
    scheduler.set_online("a", False)
    assert scheduler.choose(Request(1, 1, 0)) == "b"
    assert scheduler.choose(Request(2, 1, 0, target="a")) is None


def test_plan_orders_by_priority_then_id_and_skips_what_does_not_fit() -> None:
    scheduler = make(("a", 4, 100))
    placed = scheduler.plan(
        [Request(3, 2, 0), Request(1, 4, 0), Request(2, 2, 0, priority=5), Request(4, 2, 0)]
    )
    assert [(r.task_id, h) for r, h in placed] == [(2, "a"), (3, "a")]
    assert scheduler.nodes["a"].free_cores == 0


def test_never_fits_names_the_limit() -> None:
    scheduler = make(("a", 4, 1000))
    assert scheduler.never_fits(Request(1, 8, 0)) == "cores: 8 requested but any node has at most 4"
    assert scheduler.never_fits(Request(1, 1, 5000, target="a")).startswith("memory: 5000")
    assert scheduler.never_fits(Request(1, 1, 0, target="zz")) == "target: unknown host 'zz'"
    assert scheduler.never_fits(Request(1, 4, 1000)) is None


def test_release_is_idempotent() -> None:
    scheduler = make(("a", 4, 100))
    scheduler.allocate("a", Request(1, 2, 50))
    scheduler.allocate("a", Request(1, 2, 50))
    assert scheduler.nodes["a"].free_cores == 2
    assert scheduler.release("a", 1) is True
    assert scheduler.release("a", 1) is False
    assert (scheduler.nodes["a"].free_cores, scheduler.nodes["a"].free_memory_bytes) == (4, 100)


@given(
    st.lists(
        st.tuples(st.integers(1, 8), st.integers(0, 64), st.integers(-2, 2), st.booleans()),
        max_size=40,
    )
)
def test_resources_never_overcommitted_and_fully_returned(
    ops: list[tuple[int, int, int, bool]],
) -> None:
    scheduler = make(("a", 8, 64), ("b", 6, 48))
    running: dict[int, str] = {}
    for task_id, (cores, memory, priority, finish_one) in enumerate(ops, start=1):
        for request, host in scheduler.plan([Request(task_id, cores, memory, priority=priority)]):
            running[request.task_id] = host
        for node in scheduler.nodes.values():
            assert 0 <= node.used_cores <= node.total_cores
            assert 0 <= node.used_memory_bytes <= node.total_memory_bytes
        if finish_one and running:
            done = min(running)
            assert scheduler.release(running.pop(done), done)
    for task_id, host in running.items():
        assert scheduler.release(host, task_id)
    for node in scheduler.nodes.values():
        assert (node.used_cores, node.used_memory_bytes) == (0, 0)
