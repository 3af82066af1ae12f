"""Placement: CPU ids, NUMA, GPUs, best fit, queue order, starvation guard, drain."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings, strategies as st

from hakuriver_common.ids import EPOCH_MS, GENERATOR_BITS, SEQUENCE_BITS, id_timestamp_ms
from hakuriver_host.scheduler import Allocation, PendingQueue, Request, Scheduler

NOW = EPOCH_MS + 10_000_000
# The batch of the array in the properties with caps.
ARRAY = 7


def task_id(submitted_ms: int, seq: int = 0) -> int:
    """An id as the Host would have issued it at ``submitted_ms``."""
    return ((submitted_ms - EPOCH_MS) << (GENERATOR_BITS + SEQUENCE_BITS)) | seq


def two_numa_node(name: str = "a", gpus: tuple[int, ...] = ()) -> Scheduler:
    scheduler = Scheduler(starvation_seconds=60)
    scheduler.upsert_node(name, tuple(range(8)), 64, {0: (0, 1, 2, 3), 1: (4, 5, 6, 7)}, gpus)
    return scheduler


def test_cpus_are_specific_ids_preferring_one_numa_node() -> None:
    scheduler = two_numa_node()
    first = scheduler.choose(Request(1, 3, 0))
    assert first is not None and first.cpus == (0, 1, 2)
    scheduler.allocate(1, first)
    # Two more do not fit in NUMA 0 (one CPU left there): they come from NUMA 1 together.
    second = scheduler.choose(Request(2, 2, 0))
    assert second is not None and second.cpus == (4, 5)


def test_numa_target_takes_cpus_of_that_node_only() -> None:
    scheduler = two_numa_node()
    allocation = scheduler.choose(Request(1, 2, 0, target="a", numa_node=1))
    assert allocation == Allocation("a", (4, 5), 0, (), 1)
    scheduler.allocate(1, allocation)
    assert scheduler.choose(Request(2, 3, 0, target="a", numa_node=1)) is None
    assert scheduler.choose(Request(3, 3, 0, target="a", numa_node=0)) is not None


def test_gpu_ids_are_exclusive() -> None:
    scheduler = two_numa_node(gpus=(0, 1, 2))
    a = scheduler.choose(Request(1, 1, 0, target="a", gpu_ids=(1,)))
    assert a is not None and a.gpus == (1,)
    scheduler.allocate(1, a)
    assert scheduler.choose(Request(2, 1, 0, target="a", gpu_ids=(1, 2))) is None
    counted = scheduler.choose(Request(3, 1, 0, gpu_count=2))
    assert counted is not None and counted.gpus == (0, 2)
    scheduler.release("a", 1)
    assert scheduler.choose(Request(2, 1, 0, target="a", gpu_ids=(1, 2))) is not None


def test_best_fit_prefers_the_tightest_node() -> None:
    scheduler = Scheduler()
    scheduler.upsert_node("big", tuple(range(16)), 64)
    scheduler.upsert_node("small", tuple(range(4)), 64)
    assert scheduler.choose(Request(1, 2, 0)).hostname == "small"  # type: ignore[union-attr]
    assert scheduler.choose(Request(2, 8, 0)).hostname == "big"  # type: ignore[union-attr]


def test_offline_and_draining_nodes_get_nothing_new() -> None:
    scheduler = Scheduler()
    for name in ("a", "b", "c"):
        scheduler.upsert_node(name, (0, 1), 10)
    scheduler.set_online("a", False)
    scheduler.set_draining("b", True)
    assert scheduler.choose(Request(1, 1, 0)).hostname == "c"  # type: ignore[union-attr]
    assert scheduler.choose(Request(2, 1, 0, target="b")) is None
    scheduler.set_draining("b", False)
    assert scheduler.choose(Request(2, 1, 0, target="b")) is not None


def test_queue_order_is_priority_then_submission() -> None:
    scheduler = Scheduler()
    scheduler.upsert_node("a", (0, 1, 2, 3), 100)
    requests = [
        Request(task_id(NOW, 3), 2, 0),
        Request(task_id(NOW, 1), 4, 0),
        Request(task_id(NOW, 2), 2, 0, priority=5),
        Request(task_id(NOW, 4), 2, 0),
    ]
    placed = scheduler.plan(PendingQueue(requests), now_ms=NOW)
    assert [r.task_id for r, _ in placed] == [task_id(NOW, 2), task_id(NOW, 3)]


def test_starving_large_task_reserves_a_node_against_small_ones() -> None:
    scheduler = Scheduler(starvation_seconds=60)
    scheduler.upsert_node("a", (0, 1, 2, 3), 100)
    scheduler.allocate(1, Allocation("a", (0, 1), 0))
    big = Request(task_id(NOW - 120_000), 4, 0)  # waited two minutes
    small = Request(task_id(NOW, 1), 1, 0)
    assert scheduler.plan(PendingQueue([big, small]), now_ms=NOW) == []
    # Not yet starving: the small one is let through (backfill).
    young_big = Request(task_id(NOW - 1_000), 4, 0)
    assert [r for r, _ in scheduler.plan(PendingQueue([young_big, small]), now_ms=NOW)] == [small]
    # Once the running task ends the big one starts.
    scheduler.release("a", small.task_id)
    scheduler.release("a", 1)
    assert [r for r, _ in scheduler.plan(PendingQueue([big]), now_ms=NOW)] == [big]


def test_never_fits_names_the_limit() -> None:
    scheduler = two_numa_node(gpus=(0,))
    assert scheduler.never_fits(Request(1, 9, 0)) == "cores: 9 requested but any node has at most 8"
    assert scheduler.never_fits(Request(1, 5, 0, target="a", numa_node=0)) == (
        "cores: 5 requested but NUMA node 0 of a has 4 CPUs"
    )
    assert scheduler.never_fits(Request(1, 1, 65, target="a")) == (
        "memory: 65 bytes (65B) requested but a has at most 64 (64B)"
    )
    assert scheduler.never_fits(Request(1, 1, 0, gpu_count=2)) == (
        "gpus: 2 requested but any node has at most 1"
    )
    assert scheduler.never_fits(Request(1, 1, 0, target="zz")) == "target: unknown host 'zz'"
    assert scheduler.never_fits(Request(1, 8, 64, gpu_count=1)) is None


def test_a_request_no_single_node_holds_says_what_it_wants_in_words() -> None:
    """Each resource fits some node, all of them none: sizes as the other answers give them
    (it said "20000000000 bytes" and "1 GPUs")."""
    scheduler = Scheduler()
    scheduler.upsert_node("many-cores", tuple(range(8)), 2**30)
    scheduler.upsert_node("much-memory", (0, 1), 32 * 2**30, gpus=(0,))
    assert scheduler.never_fits(Request(1, 4, 16 * 2**30)) == (
        "request fits no single node: 4 cores and 17.2G of memory together"
    )
    assert scheduler.never_fits(Request(2, 4, 0, gpu_count=1)) == (
        "request fits no single node: 4 cores and 1 GPU together"
    )
    assert scheduler.never_fits(Request(3, 4, 16 * 2**30, gpu_count=1)) == (
        "request fits no single node: 4 cores, 17.2G of memory and 1 GPU together"
    )


def test_never_fits_follows_the_nodes_hardware() -> None:
    """Its answers are kept per request shape: a node added, changed or removed since must
    change them."""
    scheduler = Scheduler()
    assert scheduler.never_fits(Request(1, 1, 0)) == "no runner has registered yet"
    scheduler.upsert_node("a", tuple(range(4)), 64)
    big = Request(2, 8, 0)
    assert scheduler.never_fits(big) == "cores: 8 requested but any node has at most 4"
    scheduler.upsert_node("b", tuple(range(8)), 64)
    assert scheduler.never_fits(Request(3, 8, 0)) is None
    assert scheduler.never_fits(Request(4, 1, 0, target="c")) == "target: unknown host 'c'"
    scheduler.upsert_node("c", (0,), 64)
    assert scheduler.never_fits(Request(5, 1, 0, target="c")) is None
    scheduler.upsert_node("b", tuple(range(2)), 64)
    assert scheduler.never_fits(big) == "cores: 8 requested but any node has at most 4"
    scheduler.remove_node("a")
    assert scheduler.never_fits(Request(6, 3, 0)) == (
        "cores: 3 requested but any node has at most 2"
    )


def test_a_gpu_task_says_when_the_only_nodes_that_could_hold_it_take_no_work() -> None:
    """Untargeted: the nodes with enough GPUs draining or not connected is said, naming
    them, while a node without enough GPUs takes work; waiting its turn says nothing."""
    scheduler = Scheduler()
    scheduler.upsert_node("cpu", tuple(range(8)), 64)
    scheduler.upsert_node("g1", tuple(range(8)), 64, gpus=(0, 1))
    scheduler.upsert_node("g2", tuple(range(8)), 64, gpus=(0, 1, 2, 3))
    two = Request(1, 1, 0, gpu_count=2)
    assert scheduler.waiting_reason(two) == ""
    scheduler.set_draining("g1", True)
    assert scheduler.waiting_reason(two) == ""  # g2 still takes work
    scheduler.set_draining("g2", True)
    assert scheduler.waiting_reason(two) == (
        "no node with 2 GPUs is taking work: g1, g2 are draining"
    )
    scheduler.set_online("g1", False)
    assert scheduler.waiting_reason(Request(2, 1, 0, gpu_count=4)) == (
        "no node with 4 GPUs is taking work: g2 is draining"
    )
    assert scheduler.waiting_reason(two) == (
        "no node with 2 GPUs is taking work: g2 is draining; g1 is not connected"
    )
    assert scheduler.waiting_reason(Request(3, 1, 0)) == ""  # cpu takes it
    assert scheduler.waiting_reason(Request(4, 8, 65)) == (
        "no node can hold it: memory: 65 bytes (65B) requested but any node has at most 64 (64B)"
    )
    scheduler.upsert_node("g2", tuple(range(8)), 64, gpus=(0,))  # re-registered with one GPU
    assert scheduler.waiting_reason(two) == (
        "no node with 2 GPUs is taking work: g1 is not connected"
    )
    scheduler.set_draining("g1", False)
    scheduler.set_online("g1", True)
    assert scheduler.waiting_reason(two) == ""


def test_a_task_says_why_no_node_takes_work_naming_them() -> None:
    """Untargeted, with no node taking work: the reason names the nodes and why (draining
    ones are connected: saying "no node is connected" sent admins looking at the network)."""
    scheduler = Scheduler()
    scheduler.upsert_node("a", tuple(range(8)), 64)
    scheduler.upsert_node("b", tuple(range(8)), 64)
    one = Request(1, 1, 0)
    scheduler.set_draining("a", True)
    assert scheduler.waiting_reason(one) == ""
    scheduler.set_draining("b", True)
    assert scheduler.waiting_reason(one) == "no node is taking work: a, b are draining"
    scheduler.set_online("b", False)
    assert scheduler.waiting_reason(one) == (
        "no node is taking work: a is draining; b is not connected"
    )
    scheduler.remove_node("a")
    scheduler.remove_node("b")
    assert scheduler.waiting_reason(one) == "no node is registered"


def test_a_task_for_gpu_ids_its_node_no_longer_has_says_which() -> None:
    """A queued task naming GPU ids its node's Runner no longer reports says which ones,
    in the words a submission naming them is refused with; it is placed once they are back."""
    scheduler = two_numa_node(gpus=(0, 1, 2, 3))
    named = Request(1, 1, 0, target="a", gpu_ids=(1, 3))
    assert scheduler.waiting_reason(named) == ""
    scheduler.upsert_node("a", tuple(range(8)), 64, gpus=(0, 1))
    assert scheduler.waiting_reason(named) == "node a has no GPU 3 (GPU ids: [0, 1])"
    scheduler.upsert_node("a", tuple(range(8)), 64)
    assert scheduler.waiting_reason(named) == "node a has no GPUs 1, 3 (GPU ids: none)"
    scheduler.set_draining("a", True)
    assert scheduler.waiting_reason(named) == "node a has no GPUs 1, 3 (GPU ids: none)"
    assert scheduler.choose(named) is None
    assert scheduler.waiting_reason(Request(2, 9, 0, target="a")) == (
        "node a cannot hold it: cores: 9 requested but a has at most 8"
    )
    assert scheduler.waiting_reason(Request(3, 1, 0, target="b")) == "node b is not registered"
    scheduler.set_draining("a", False)
    scheduler.upsert_node("a", tuple(range(8)), 64, gpus=(0, 1, 2, 3))
    assert scheduler.waiting_reason(named) == ""
    assert scheduler.choose(named) == Allocation("a", (0,), 0, (1, 3))


def test_a_gpu_missing_from_the_readings_goes_to_no_new_task_until_read_again() -> None:
    """A task holding a GPU that dropped out keeps it; the GPU is not freed when that task
    ends, and once read again it is free unless held (never held twice)."""
    scheduler = two_numa_node(gpus=(0, 1))
    node = scheduler.nodes["a"]
    held = scheduler.choose(Request(1, 1, 0, gpu_count=1))
    assert held is not None and held.gpus == (0,)
    scheduler.allocate(1, held)
    assert scheduler.set_unread_gpus("a", [0, 1]) and not scheduler.set_unread_gpus("a", [1, 0])
    assert node.holders[1] == held and node.free_gpus == set()
    assert scheduler.choose(Request(2, 1, 0, gpu_count=1)) is None
    scheduler.release("a", 1)
    assert node.free_gpus == set() and scheduler.choose(Request(2, 1, 0, gpu_count=1)) is None
    scheduler.set_unread_gpus("a", [1])
    again = scheduler.choose(Request(2, 1, 0, gpu_count=1))
    assert again is not None and again.gpus == (0,)
    scheduler.allocate(2, again)
    scheduler.set_unread_gpus("a", [])
    assert node.free_gpus == {1}
    scheduler.set_unread_gpus("a", [1])
    scheduler.upsert_node("a", tuple(range(8)), 64, gpus=(0, 1))  # registered: all read
    assert node.free_gpus == {1} and node.unread_gpus == frozenset()


def test_a_task_kept_off_by_gpus_missing_from_the_readings_says_which() -> None:
    """Named or counted, targeted or not; a starving one reserves no node for them (it would
    hold the node's other work back for as long as the GPU is gone)."""
    scheduler = two_numa_node(gpus=(0, 1, 2))
    scheduler.upsert_node("b", tuple(range(8)), 64, gpus=(0,))
    scheduler.set_unread_gpus("a", [1, 2])
    named = Request(task_id(NOW - 120_000), 1, 0, target="a", gpu_ids=(0, 2))
    assert scheduler.waiting_reason(named) == (
        "node a's GPU 2 dropped out of its readings (NVML cannot read it)"
    )
    assert scheduler.waiting_reason(Request(2, 1, 0, target="a", gpu_count=2)) == (
        "node a's GPUs 1, 2 dropped out of its readings (NVML cannot read them): "
        "1 of its 3 GPUs is read"
    )
    assert scheduler.waiting_reason(Request(3, 1, 0, gpu_count=1)) == ""
    assert scheduler.waiting_reason(Request(3, 1, 0, gpu_count=2)) == (
        "no node taking work has 2 GPUs read: a's GPUs 1, 2 dropped out of its readings "
        "(NVML cannot read them): 1 of its 3 GPUs is read"
    )
    queue = PendingQueue([named, Request(task_id(NOW), 8, 0, target="a")])
    assert [r.task_id for r, _ in scheduler.plan(queue, NOW)] == [task_id(NOW)]
    scheduler.set_unread_gpus("a", [1])
    assert scheduler.waiting_reason(named) == ""


def test_a_pass_places_the_task_made_ready_for_the_cpus_that_freed_up_passing_the_head_once() -> (
    None
):
    """Two CPUs busy, three alike tasks queued, the first two made ready for CPU 0 and CPU 1
    (as foreseen). CPU 1 frees first: the one made ready for it starts, the head keeps its
    place; the next end starts the head wherever it is, as it was passed over once."""
    scheduler = Scheduler()
    scheduler.upsert_node("a", (0, 1), 64)
    on = {cpu: Allocation("a", (cpu,), 0) for cpu in (0, 1)}
    scheduler.allocate(1, on[0])
    scheduler.allocate(2, on[1])
    head, twin, third, fourth = (Request(n, 1, 0) for n in (10, 11, 12, 13))
    scheduler.made_ready = {head.task_id: on[0], twin.task_id: on[1]}
    queue = PendingQueue([head, twin, third, fourth])

    scheduler.release("a", 2)
    assert scheduler.plan(queue, NOW) == [(twin, on[1])]
    assert [r.task_id for r in queue.ranked()] == [10, 12, 13]

    # The head was passed over once: the next free CPUs are its own, whatever it was made
    # ready for (the third was made ready for them).
    scheduler.made_ready = {head.task_id: on[0], third.task_id: on[1]}
    scheduler.release("a", twin.task_id)
    assert scheduler.plan(queue, NOW) == [(head, on[1])]

    # Without anything made ready, queue order alone.
    scheduler.made_ready = {}
    scheduler.release("a", 1)
    assert scheduler.plan(queue, NOW) == [(third, on[0])]


def test_a_task_made_ready_behind_with_another_priority_or_elsewhere_is_not_taken() -> None:
    scheduler = Scheduler()
    scheduler.upsert_node("a", (0, 1), 64)
    scheduler.upsert_node("b", (0, 1), 64)
    on_a1 = Allocation("a", (1,), 0)
    for n, cpu in ((1, 0), (2, 1)):
        scheduler.allocate(n, Allocation("a", (cpu,), 0))
        scheduler.allocate(n + 2, Allocation("b", (cpu,), 0))
    head, low = Request(10, 1, 0, target="a"), Request(11, 1, 0, target="a", priority=-1)
    scheduler.made_ready = {head.task_id: Allocation("a", (0,), 0), low.task_id: on_a1}
    scheduler.release("a", 2)
    assert scheduler.plan(PendingQueue([head, low]), NOW) == [(head, on_a1)]

    # Made ready on another node than the CPUs freed: not a reason to pass the head.
    scheduler.release("a", head.task_id)
    head, twin = Request(20, 1, 0), Request(21, 1, 0)
    scheduler.made_ready = {head.task_id: Allocation("b", (0,), 0), twin.task_id: on_a1}
    assert scheduler.plan(PendingQueue([head, twin]), NOW) == [(head, on_a1)]


def test_release_is_idempotent_and_restores_everything() -> None:
    scheduler = two_numa_node(gpus=(0, 1))
    allocation = scheduler.choose(Request(1, 3, 50, gpu_count=1))
    assert allocation is not None
    scheduler.allocate(1, allocation)
    scheduler.allocate(1, allocation)
    node = scheduler.nodes["a"]
    assert (node.free_cores, node.free_memory_bytes, len(node.free_gpus)) == (5, 14, 1)
    assert scheduler.release("a", 1) is True
    assert scheduler.release("a", 1) is False
    assert (node.free_cores, node.free_memory_bytes, len(node.free_gpus)) == (8, 64, 2)


def test_hardware_update_keeps_holdings() -> None:
    scheduler = two_numa_node()
    scheduler.allocate(1, Allocation("a", (0, 1), 10))
    scheduler.upsert_node("a", tuple(range(8)), 64, {0: (0, 1, 2, 3), 1: (4, 5, 6, 7)})
    assert scheduler.nodes["a"].free_cpus == set(range(2, 8))
    assert scheduler.nodes["a"].used_memory_bytes == 10


def _like(template: Request, new_id: int, group: int = 0, cap: int = 0) -> Request:
    """A request shaped like ``template`` that admission would accept (GPU ids only with a
    target, and never both ids and a count)."""
    return Request(
        task_id=new_id,
        cores=template.cores,
        memory_bytes=template.memory_bytes,
        target=template.target,
        numa_node=template.numa_node,
        gpu_ids=template.gpu_ids if template.target else (),
        gpu_count=0 if template.gpu_ids and template.target else template.gpu_count,
        priority=template.priority,
        group=group,
        group_cap=cap,
    )


request_strategy = st.builds(
    Request,
    task_id=st.just(0),
    cores=st.integers(1, 6),
    memory_bytes=st.integers(0, 40),
    target=st.sampled_from([None, "a", "b"]),
    numa_node=st.sampled_from([None, 0, 1]),
    gpu_ids=st.sampled_from([(), (0,), (1,), (0, 1)]),
    gpu_count=st.integers(0, 2),
    priority=st.integers(-1, 1),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            request_strategy, st.integers(0, 200_000), st.lists(st.integers(0, 30), max_size=3)
        ),
        max_size=30,
    )
)
def test_nothing_is_ever_held_twice_and_everything_is_released_once(
    steps: list[tuple[Request, int, list[int]]],
) -> None:
    scheduler = Scheduler(starvation_seconds=60)
    numa_a = {0: (0, 1, 2, 3), 1: (4, 5, 6, 7)}
    scheduler.upsert_node("a", tuple(range(8)), 64, numa_a, (0, 1), numa_memory={0: 32, 1: 32})
    scheduler.upsert_node("b", tuple(range(4)), 32, {0: (0, 1, 2, 3)}, (0, 1), {0: 32})
    pending: list[Request] = []
    holding: dict[int, Allocation] = {}
    for seq, (template, age_ms, finish) in enumerate(steps):
        request = _like(template, task_id(NOW - age_ms, seq))
        if scheduler.never_fits(request) is None:
            pending.append(request)
        for placed, allocation in scheduler.plan(PendingQueue(pending), now_ms=NOW):
            pending.remove(placed)
            assert placed.task_id not in holding
            holding[placed.task_id] = allocation
            assert len(allocation.cpus) == placed.cores
            if placed.numa_node is not None:
                assert set(allocation.cpus) <= set(
                    scheduler.nodes[allocation.hostname].numa[placed.numa_node]
                )
            if placed.gpu_ids:
                assert allocation.gpus == placed.gpu_ids
        for node in scheduler.nodes.values():
            held = [a for a in holding.values() if a.hostname == node.hostname]
            cpus = [c for a in held for c in a.cpus]
            gpus = [g for a in held for g in a.gpus]
            assert len(cpus) == len(set(cpus)), "a CPU is held twice"
            assert len(gpus) == len(set(gpus)), "a GPU is held twice"
            assert set(cpus) | node.free_cpus == set(node.cpus)
            assert not set(cpus) & node.free_cpus
            assert set(gpus) | node.free_gpus == set(node.gpus)
            assert sum(a.memory_bytes for a in held) == node.used_memory_bytes <= node.memory_bytes
            for numa in node.numa:
                bound = sum(a.memory_bytes for a in held if a.numa_node == numa)
                assert bound == node.numa_used.get(numa, 0) <= node.memory_for(numa)
        for index in finish:
            if holding:
                victim = sorted(holding)[index % len(holding)]
                allocation = holding.pop(victim)
                assert scheduler.release(allocation.hostname, victim) is True
                assert scheduler.release(allocation.hostname, victim) is False
    for victim, allocation in holding.items():
        assert scheduler.release(allocation.hostname, victim) is True
    for node in scheduler.nodes.values():
        assert node.free_cpus == set(node.cpus)
        assert node.free_gpus == set(node.gpus)
        assert node.used_memory_bytes == 0


def _plan_one_by_one(
    scheduler: Scheduler, pending: list[Request], now_ms: int
) -> list[tuple[Request, Allocation]]:
    """The reference: every request in queue order, each tried unless its array is at its
    cap; a starving one that does not fit reserves a node. (What ``plan`` must decide,
    without its lines of alike requests.)"""
    placed: list[tuple[Request, Allocation]] = []
    reserved: set[str] = set()
    reserving_shapes: set[tuple[object, ...]] = set()
    holding = dict(scheduler._holding)
    for request in sorted(pending, key=lambda r: (-r.priority, r.task_id)):
        if request.group_cap and holding.get(request.group, 0) >= request.group_cap:
            continue
        allocation = scheduler.choose(request, excluded=reserved)
        if allocation is not None:
            scheduler.allocate(request.task_id, allocation, request.group)
            holding[request.group] = holding.get(request.group, 0) + 1
            placed.append((request, allocation))
            continue
        shape = (request.cores, request.memory_bytes, request.target, request.numa_node)
        shape += (request.gpu_ids, request.gpu_count)
        starving = now_ms - id_timestamp_ms(request.task_id) >= scheduler.starvation_ms
        if starving and shape not in reserving_shapes:
            reserving_shapes.add(shape)
            hostname = scheduler._reserve_for(request)
            if hostname is not None:
                reserved.add(hostname)
    return placed


def _cluster() -> Scheduler:
    scheduler = Scheduler(starvation_seconds=60)
    scheduler.upsert_node("a", tuple(range(8)), 64, {0: (0, 1, 2, 3), 1: (4, 5, 6, 7)}, (0, 1))
    scheduler.upsert_node("b", tuple(range(4)), 32, {0: (0, 1, 2, 3)}, (0, 1))
    return scheduler


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            request_strategy,
            st.integers(0, 200_000),  # age in ms
            st.integers(1, 40),  # tasks alike (a job array when > 1)
            st.integers(0, 3),  # the array's cap (0: none)
        ),
        max_size=8,
    ),
    st.lists(st.integers(0, 50), max_size=5),
)
def test_lines_of_alike_requests_place_exactly_what_one_by_one_would(
    submissions: list[tuple[Request, int, int, int]], finishing: list[int]
) -> None:
    """Job arrays and caps: the queue's lines decide the same placements, in the same order,
    as trying every request in queue order, pass after pass while tasks end."""
    fast, slow = _cluster(), _cluster()
    pending: list[Request] = []
    seq = 0
    for group, (template, age_ms, count, cap) in enumerate(submissions, start=1):
        for _ in range(count):
            seq += 1
            pending.append(_like(template, task_id(NOW - age_ms, seq), group if cap else 0, cap))
    pending = [r for r in pending if fast.never_fits(r) is None]
    queue = PendingQueue(pending)
    left = list(pending)
    held: list[tuple[Request, Allocation]] = []
    for index in [*finishing, -1]:
        got = fast.plan(queue, now_ms=NOW)
        want = _plan_one_by_one(slow, left, now_ms=NOW)
        assert [(r.task_id, a) for r, a in got] == [(r.task_id, a) for r, a in want]
        for request, _ in got:
            left.remove(request)
        assert sorted(r.task_id for r in queue.ranked()) == sorted(r.task_id for r in left)
        held += got
        for request, _ in held:
            if request.group_cap:
                group_held = [r for r, _ in held if r.group == request.group]
                assert len(group_held) <= request.group_cap, "an array's cap was passed"
        if index >= 0 and held:
            request, allocation = held.pop(index % len(held))
            assert fast.release(allocation.hostname, request.task_id)
            assert slow.release(allocation.hostname, request.task_id)


def test_a_starving_request_behind_alike_ones_of_a_higher_priority_reserves_its_node() -> None:
    """Priority is part of what makes requests alike: an old request queued behind newer
    alike ones of a higher priority that do not fit reserves its node once starving, as it
    does when requests are tried one by one (found by the property test above)."""
    fast, slow = _cluster(), _cluster()
    newer = [
        Request(task_id(NOW, seq), cores=1, memory_bytes=9, target="a", priority=1)
        for seq in range(8)
    ]
    old = Request(task_id(NOW - 60_000, 100), cores=1, memory_bytes=9, target="a")
    small = [Request(task_id(NOW, 200 + seq), cores=1, memory_bytes=0) for seq in range(3)]
    pending = [*newer, old, *small]
    got = fast.plan(PendingQueue(pending), now_ms=NOW)
    want = _plan_one_by_one(slow, list(pending), now_ms=NOW)
    assert [(r.task_id, a) for r, a in got] == [(r.task_id, a) for r, a in want]
    assert all(a.hostname == "b" for r, a in got if r.target is None)


def test_a_line_placed_on_a_node_a_starving_request_then_reserved_goes_no_further_there() -> None:
    """A line of alike requests goes on filling the node it was just placed on, unless a
    starving request reserved that node in between."""
    scheduler = Scheduler(starvation_seconds=60)
    scheduler.upsert_node("a", tuple(range(8)), 64)
    scheduler.upsert_node("b", tuple(range(8)), 64)
    scheduler.allocate(1, Allocation("a", (0, 1), 0))
    scheduler.allocate(2, Allocation("b", tuple(range(7)), 0))
    first, second = (
        Request(task_id(NOW - age, n), 2, 0) for n, age in ((3, 200_000), (5, 100_000))
    )
    big = Request(task_id(NOW - 120_000, 4), 7, 0)  # starving, fits nowhere now: reserves "a"
    placed = scheduler.plan(PendingQueue([first, second, big]), now_ms=NOW)
    assert [(r.task_id, a.hostname) for r, a in placed] == [(first.task_id, "a")]


def test_a_pass_read_across_a_release_ranks_the_nodes_again() -> None:
    """A pass is read one placement at a time; a node freed meanwhile may be the best fit
    for the line's next request."""
    scheduler = Scheduler()
    scheduler.upsert_node("a", tuple(range(8)), 64)
    scheduler.upsert_node("b", tuple(range(4)), 64)
    scheduler.allocate(97, Allocation("b", (0,), 0))
    scheduler.allocate(98, Allocation("b", (1, 2, 3), 0))
    line = [Request(task_id(NOW, n), 1, 0) for n in (1, 2)]
    plan = scheduler.iter_plan(PendingQueue(line), now_ms=NOW)
    assert next(plan)[1].hostname == "a"  # the only node with room
    scheduler.release("b", 97)  # while the pass is read: "b" has 1 free, "a" 7
    assert next(plan)[1] == Allocation("b", (0,), 0)


def _busy_pair() -> Scheduler:
    """Node "a" with CPUs 0 and 1, held by tasks 1 then 2."""
    scheduler = Scheduler()
    scheduler.upsert_node("a", (0, 1), 100)
    scheduler.allocate(1, Allocation("a", (1,), 0))
    scheduler.allocate(2, Allocation("a", (0,), 0))
    return scheduler


def test_lookahead_foresees_the_next_tasks_on_the_cpus_that_free_first() -> None:
    scheduler = _busy_pair()
    queue = PendingQueue([Request(task_id(NOW, n), 1, 0) for n in (3, 4, 5)])
    foreseen = scheduler.lookahead(queue, per_node=2)
    assert [(r.task_id, a) for r, a in foreseen] == [
        (task_id(NOW, 3), Allocation("a", (1,), 0)),
        (task_id(NOW, 4), Allocation("a", (0,), 0)),
    ]
    node = scheduler.nodes["a"]
    assert (node.free_cpus, list(node.holders)) == (set(), [1, 2]), "lookahead changed the node"
    assert scheduler.lookahead(queue, per_node=0) == []


def test_lookahead_foresees_a_small_task_backfilling_before_a_large_one() -> None:
    scheduler = _busy_pair()
    large, small = Request(task_id(NOW, 3), 2, 0), Request(task_id(NOW, 4), 1, 0)
    foreseen = scheduler.lookahead(PendingQueue([large, small]), per_node=2)
    # The large one fits nowhere while the small one, placed first, runs.
    assert [(r.task_id, a.cpus) for r, a in foreseen] == [(small.task_id, (1,))]


def test_lookahead_of_several_nodes_takes_only_requests_bound_to_one() -> None:
    scheduler = _busy_pair()
    scheduler.upsert_node("b", (0,), 100)
    scheduler.allocate(9, Allocation("b", (0,), 0))
    anywhere, targeted = Request(task_id(NOW, 3), 1, 0), Request(task_id(NOW, 4), 1, 0, target="b")
    foreseen = scheduler.lookahead(PendingQueue([anywhere, targeted]), per_node=2)
    assert [(r.task_id, a) for r, a in foreseen] == [(targeted.task_id, Allocation("b", (0,), 0))]
    scheduler.set_draining("b", True)
    assert scheduler.lookahead(PendingQueue([anywhere, targeted]), per_node=2) == [
        (anywhere, Allocation("a", (1,), 0))
    ]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(request_strategy, max_size=6),
    st.lists(request_strategy, min_size=1, max_size=4),
    st.integers(1, 4),
    st.integers(0, 3),
)
def test_lookahead_is_what_passes_place_as_the_node_empties_in_placement_order(
    running: list[Request], queued: list[Request], per_node: int, cap: int
) -> None:
    """On a node taking all the work, what is foreseen is exactly what placement passes
    place when its tasks end one at a time, oldest first; also when the queued tasks are
    an array's with a cap (``cap``; 0: none), some of whose tasks run already."""
    scheduler = Scheduler(starvation_seconds=60)
    scheduler.upsert_node("a", tuple(range(8)), 64, {0: (0, 1, 2, 3), 1: (4, 5, 6, 7)}, (0, 1))
    seq = 0
    for template in running:
        seq += 1
        request = _like(template, task_id(NOW, seq))
        allocation = scheduler.choose(request)
        if request.target in (None, "a") and allocation is not None:
            scheduler.allocate(request.task_id, allocation, ARRAY if seq % 2 else 0)
    pending = []
    for template in queued[:per_node]:
        seq += 1
        request = replace(_like(template, task_id(NOW, seq), ARRAY, cap), target=None, gpu_ids=())
        if scheduler.never_fits(request) is None:
            pending.append(request)
    queue = PendingQueue(pending)
    foreseen = scheduler.lookahead(queue, per_node)
    ending = list(scheduler.nodes["a"].holders)
    played: list[tuple[Request, Allocation]] = []
    while True:
        played += scheduler.plan(queue, now_ms=NOW)
        if not ending or not queue.ranked():
            break
        assert scheduler.release("a", ending.pop(0))
    assert [(r.task_id, a) for r, a in foreseen] == [(r.task_id, a) for r, a in played]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(request_strategy, st.integers(0, 200_000)), max_size=12),
    st.lists(st.integers(0, 50), max_size=4),
    request_strategy,
    st.booleans(),
)
def test_placing_a_request_at_once_changes_nothing_a_pass_would_decide(
    queued: list[tuple[Request, int]], finishing: list[int], template: Request, hold: bool
) -> None:
    """``place_now`` places a new request ahead of its turn only when nobody ahead of it
    could use its nodes: a pass afterwards then places exactly what one pass over the
    queue with the request in it would, the request included, on the same CPUs; also when
    some of those queued are a held batch's (``hold``)."""
    now, ahead = _cluster(), _cluster()
    pending = [
        _like(t, task_id(NOW - age, seq), ARRAY if hold and seq % 2 else 0)
        for seq, (t, age) in enumerate(queued, start=1)
    ]
    pending = [r for r in pending if now.never_fits(r) is None]
    for scheduler in (now, ahead):
        scheduler.held = {ARRAY} if hold else set()
        held = scheduler.plan(PendingQueue(pending), now_ms=NOW)
        for index in finishing:
            if held:
                request, allocation = held.pop(index % len(held))
                scheduler.release(allocation.hostname, request.task_id)
    holding = {task for node in now.nodes.values() for task in node.holders}
    left = [r for r in pending if r.task_id not in holding]
    new = _like(template, task_id(NOW, len(queued) + 1))
    if now.never_fits(new) is not None:
        return
    queue = PendingQueue([*left, new])
    placed = now.place_now(queue, new)
    if placed is None:
        assert new in queue.ranked()
        assert [n.free_cpus for n in now.nodes.values()] == [
            n.free_cpus for n in ahead.nodes.values()
        ]
        return
    assert new not in queue.ranked()
    got = {(r.task_id, a) for r, a in now.plan(queue, now_ms=NOW)} | {(new.task_id, placed)}
    want = {(r.task_id, a) for r, a in ahead.plan(PendingQueue([*left, new]), now_ms=NOW)}
    assert got == want


def test_a_held_batch_ahead_does_not_keep_a_new_request_from_being_placed_at_once() -> None:
    """A held batch's tasks could take no node now: a new request that fits is placed at
    once, as a pass would place it, not left for a pass."""
    scheduler = Scheduler()
    scheduler.upsert_node("a", (0, 1), 100)
    scheduler.held = {ARRAY}
    older = Request(task_id(NOW, 1), 1, 0, group=ARRAY)
    new = Request(task_id(NOW, 2), 1, 0)
    queue = PendingQueue([older, new])
    assert scheduler.place_now(queue, new) == Allocation("a", (0,), 0)
    assert queue.ranked() == [older]


def _best_by_ranking_every_node(
    scheduler: Scheduler, request: Request, excluded: set[str]
) -> Allocation | None:
    """Best fit as defined: of the nodes taking work with room, the one with the least
    free (cores, memory, GPUs, then name) where the request fits."""
    nodes = [scheduler.nodes[request.target]] if request.target else scheduler.nodes.values()
    roomy = [
        n for n in nodes if n.accepts_work and n.hostname not in excluded and n.has_room(request)
    ]
    for node in sorted(
        roomy, key=lambda n: (n.free_cores, n.free_memory_bytes, len(n.free_gpus), n.hostname)
    ):
        allocation = node.fit(request)
        if allocation is not None:
            return allocation
    return None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            request_strategy,
            st.sampled_from(["place", "release", "offline", "drain", "resize", "exclude"]),
            st.integers(0, 30),
        ),
        max_size=40,
    )
)
def test_choose_keeps_to_best_fit_as_nodes_change(steps: list[tuple[Request, str, int]]) -> None:
    """``choose`` starts from a ranking it keeps up to date (not ranking every node per
    call): through placements, releases, nodes going offline, draining and changing
    hardware it picks what ranking every node would."""
    scheduler = Scheduler(starvation_seconds=60)
    names = ["a", "b", "c", "d"]
    for index, name in enumerate(names):
        cores = 4 + 2 * index
        scheduler.upsert_node(name, tuple(range(cores)), 32 + 8 * index, {}, (0, 1)[: index % 3])
    holding: dict[int, Allocation] = {}
    excluded: set[str] = set()
    for seq, (template, action, pick) in enumerate(steps):
        request = _like(template, task_id(NOW, seq))
        request = replace(request, numa_node=None, target=request.target and names[pick % 4])
        chosen = scheduler.choose(request, excluded)
        assert chosen == _best_by_ranking_every_node(scheduler, request, excluded)
        name = names[pick % 4]
        if action == "place" and chosen is not None:
            scheduler.allocate(request.task_id, chosen)
            holding[request.task_id] = chosen
        elif action == "release" and holding:
            victim = sorted(holding)[pick % len(holding)]
            assert scheduler.release(holding.pop(victim).hostname, victim)
        elif action == "offline":
            scheduler.set_online(name, not scheduler.nodes[name].online)
        elif action == "drain":
            scheduler.set_draining(name, not scheduler.nodes[name].draining)
        elif action == "resize":
            node = scheduler.nodes[name]
            cores = len(node.cpus) + (2 if pick % 2 else -1)
            held = {c for a in holding.values() if a.hostname == name for c in a.cpus}
            if cores > 0 and held <= set(range(cores)):
                scheduler.upsert_node(name, tuple(range(cores)), node.memory_bytes, {}, node.gpus)
        elif action == "exclude":
            excluded ^= {name}
        for cores in range(1, 10):  # and any size of request, after each change
            probe = Request(task_id(NOW, 1_000 + seq), cores, 0)
            assert scheduler.choose(probe) == _best_by_ranking_every_node(scheduler, probe, set())


def test_a_numa_node_reporting_more_memory_than_its_node_holds_no_more_than_the_node() -> None:
    """sysfs's NUMA figures are the machine's, a container's /proc may show less: a task
    bound to that NUMA node can never get more than the node's memory."""
    scheduler = Scheduler()
    scheduler.upsert_node("a", (0, 1), 8 * 2**30, {0: (0, 1)}, numa_memory={0: 16 * 2**30})
    request = Request(1, 1, 12 * 2**30, target="a", numa_node=0)
    assert not scheduler.nodes["a"].could_ever_fit(request)
    assert scheduler.never_fits(request) == (
        "memory: 12884901888 bytes (12.9G) requested but NUMA node 0 of a has 8589934592 (8.6G)"
    )
