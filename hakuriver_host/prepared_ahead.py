"""Queued tasks the Runners were asked to make ready ahead of their start.

After each placement pass the scheduler foresees which queued tasks each busy node starts
next, and where on it (``Scheduler.lookahead``); the node's Runner gets a prepare message for
each and makes its container: started with the command held at a gate (or, for an image
the gate cannot hold, created only). When the task is placed there as foreseen, its dispatch
only releases the gate (or starts the container); placed elsewhere, on other CPUs, ended
while queued, or no longer foreseen, the prepared container is released. Which of a node's
tasks ends first is a guess, so a pass places, of alike queued tasks, one made ready for the
CPUs that freed up (``Scheduler._made_ready_for``). Nothing here is stored: a hint lost with
a Host or a stream costs only the time it would have saved.
"""

from __future__ import annotations

from collections.abc import Callable

from hakuriver_common.environments import NULL_CONTAINER
from hakuriver_common.statuses import TaskKind
from hakuriver_host.convert import dispatch_of
from hakuriver_host.models import Task
from hakuriver_host.runner_link import RunnerLink
from hakuriver_host.scheduler import Allocation, Request


def preparable(task: Task) -> bool:
    """Command tasks in containers (a VPS takes its SSH port at start; a process has no
    container to make)."""
    return task.kind == TaskKind.COMMAND.value and task.container_name != NULL_CONTAINER


class PreparedAhead:
    def __init__(self) -> None:
        # Task id -> the allocation it was prepared for (what the scheduler reads), and
        # the link of that node it was prepared on.
        self.allocations: dict[int, Allocation] = {}
        self._links: dict[int, RunnerLink] = {}

    def __len__(self) -> int:
        return len(self._links)

    def update(
        self,
        foreseen: list[tuple[Request, Allocation]],
        link_of: Callable[[str], RunnerLink | None],
        task_of: Callable[[int], Task | None],
    ) -> None:
        """Prepare what is foreseen and not prepared yet (or prepared on another node);
        release what was prepared and is no longer foreseen. One foreseen on its node again
        but on other CPUs keeps what was prepared: which of a node's tasks ends first is a
        guess, and a pass places a task made ready for the CPUs that did free up first
        (Scheduler._made_ready_for), where making it again would cost its container."""
        wanted: dict[int, tuple[Allocation, Task]] = {}
        for request, allocation in foreseen:
            task = task_of(request.task_id)
            if task is not None and preparable(task):
                wanted[request.task_id] = (allocation, task)
        for task_id, link in list(self._links.items()):
            if link.closed:
                self._forget(task_id)
            elif task_id not in wanted or wanted[task_id][0].hostname != link.hostname:
                self.drop(task_id)
        for task_id, (allocation, task) in wanted.items():
            if task_id in self._links:
                continue
            target = link_of(allocation.hostname)
            if target is None or not target.prepares or target.closed:
                continue
            target.prepare(dispatch_of(task, allocation))
            self._links[task_id] = target
            self.allocations[task_id] = allocation

    def placed(self, task_id: int, allocation: Allocation) -> None:
        """The task was placed: a container prepared for anything else is released (the
        Runner replaces one prepared on its own node for other CPUs by itself)."""
        link = self._forget(task_id)
        if link is not None and link.hostname != allocation.hostname and not link.closed:
            link.release(task_id)

    def drop(self, task_id: int) -> None:
        """Release what was prepared for the task (it ended, or is foreseen elsewhere)."""
        link = self._forget(task_id)
        if link is not None and not link.closed:
            link.release(task_id)

    def _forget(self, task_id: int) -> RunnerLink | None:
        """No longer prepared: the link it was prepared on, if it was."""
        self.allocations.pop(task_id, None)
        return self._links.pop(task_id, None)
