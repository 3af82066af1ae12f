// Live task lists: ListTasks once, then TaskService.WatchTasks, which sends every task the
// caller may see as it is submitted and again after each status change (the task as it is
// after the change; users get only their own tasks). It sends nothing of the past, so a
// page watches first, lists once the Host says the watch is in place (send_watching), and
// applies each event on top: events that arrive while a list is on its way are applied
// again on top of its answer. When the stream breaks (a Host restart, or
// RESOURCE_EXHAUSTED for a watcher that fell far behind), useLive reopens it and the page
// lists again.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { ref } from "vue";
import { type Task, TaskStatus } from "../gen/hakuriver/v1/task_pb";
import type { ListTasksRequestSchema } from "../gen/hakuriver/v1/task_service_pb";
import { api, errorMessage, isUnreachable } from "./api";
import { FINAL_STATUSES } from "./format";
import { useLive } from "./live";
import { useEvery, useSoon } from "./timers";

/**
 * Follow WatchTasks until ``signal`` aborts, passing each task to ``onTask``. ``opened``
 * is called when the Host says the watch is in place (its first message, asked for with
 * sendWatching): every change after it is sent, so a list asked for then misses none. A
 * stream the Host ends without an error is reported as one, so useLive opens it again.
 */
export async function followTasks(
  signal: AbortSignal,
  onTask: (task: Task) => void,
  opened?: () => void,
): Promise<void> {
  for await (const reply of api.tasks.watchTasks({ sendWatching: true }, { signal })) {
    if (reply.watching) opened?.();
    if (reply.task) onTask(reply.task);
  }
  throw new Error("the Host ended the task stream");
}

/**
 * One WatchTasks stream for the component's life. ``opened`` runs at every (re)connection:
 * list there (with ``relist``). ``relist(fetch, apply)`` asks ``fetch``, gives its answer
 * to ``apply`` (which returns false for an answer it dropped as stale), then passes the
 * events that arrived meanwhile to ``onTask`` again.
 */
export function useTaskFeed(onTask: (task: Task) => void, opened: () => Promise<void>) {
  const log: Task[] = [];
  let listing = 0;

  function deliver(task: Task): void {
    if (listing) log.push(task);
    onTask(task);
  }

  async function relist<A>(fetch: () => Promise<A>, apply: (answer: A) => boolean): Promise<void> {
    const start = log.length;
    listing += 1;
    try {
      const answer = await fetch();
      if (apply(answer)) for (const task of log.slice(start)) onTask(task);
    } finally {
      listing -= 1;
      if (!listing) log.length = 0;
    }
  }

  // Streams opened, and the last of them that failed: a list that comes back after its
  // stream failed (both refused while the Host is away, the list last) must not clear that
  // failure, or the page never says it is reconnecting.
  let attempts = 0;
  let failed = 0;
  const live = useLive(async (signal) => {
    const mine = ++attempts;
    try {
      await followTasks(signal, deliver, () => {
        // useLive keeps the last failure until the stream ends; a fresh list means it is over.
        void opened().then(() => {
          if (failed !== mine) live.error.value = "";
        });
      });
    } catch (failure) {
      failed = mine;
      throw failure;
    }
  });
  return { error: live.error, relist };
}

/** Whether a task's change moves the queue: it joined it, left it for a node, or was
 * killed while waiting (the positions of the pending tasks behind it change). */
export function movesQueue(task: Task): boolean {
  return (
    task.status === TaskStatus.PENDING ||
    task.status === TaskStatus.ASSIGNING ||
    (FINAL_STATUSES.has(task.status) && !task.assignedNode)
  );
}

/** Whether a task's change reserves or frees a node's cores, memory or GPUs: it was
 * placed (assigning) or ended on a node. */
export function changesReservations(task: Task): boolean {
  return (
    !!task.assignedNode &&
    (task.status === TaskStatus.ASSIGNING || FINAL_STATUSES.has(task.status))
  );
}

export type TaskQuery = MessageInitShape<typeof ListTasksRequestSchema>;

export interface LiveTasksOptions {
  /** The ListTasks request for what is shown, newest first (read at each list and event). */
  query: () => TaskQuery;
  /** A second request listed with it, its tasks shown among the first's in id order: what
   * the first's limit could leave out (the VPS page: every active VPS, however many newer
   * ones have ended). */
  alsoQuery?: () => TaskQuery;
  /** Whether a task belongs to what is shown (the query's filters, client-side). */
  matches: (task: Task) => boolean;
  /** A shown task that stops matching: "keep" it (updated) until the next list, or "drop"
   * it at once. */
  unmatched: "keep" | "drop";
  /** Told of every event too, after the list has taken it. */
  onEvent?: (task: Task) => void;
  /** Told when the stream (re)opens, as the list is asked for again. */
  onOpen?: () => void;
}

/**
 * A page of tasks (``query``), live. Shown tasks are updated in place by id; a task that
 * matches and falls within the page (below its ``beforeTaskId`` bound, and newer than its
 * oldest row or the page is not full) is inserted in id order, so new tasks appear at the
 * top of the newest page. ``reload()`` lists again (the page calls it when its filters
 * change, and useQueueRefresh while it shows queued tasks).
 */
export function useLiveTasks(options: LiveTasksOptions) {
  const tasks = ref<Task[]>([]);
  const loaded = ref(false);
  const error = ref("");
  // Where the page's query reads on from (0n: nothing older). A page filtered by status or
  // node may hold fewer rows than its limit and still have older ones.
  const readOn = ref(0n);
  let query = 0;
  // The last list was refused (not unanswered): no row is shown until one is answered.
  let refused = false;

  function upsert(task: Task): void {
    const list = tasks.value;
    const at = list.findIndex((t) => t.taskId === task.taskId);
    const matches = options.matches(task);
    if (at >= 0) {
      const old = list[at]!;
      // A unary answer (kill, pause) can arrive after the stream's later news: a final
      // status is never replaced by an earlier one.
      if (FINAL_STATUSES.has(old.status) && !FINAL_STATUSES.has(task.status)) return;
      if (!matches && options.unmatched === "drop") {
        list.splice(at, 1);
        return;
      }
      // Events carry no queue position: keep the listed one while the task still waits.
      if (task.status === TaskStatus.PENDING && old.status === TaskStatus.PENDING && !task.queuePosition) {
        task.queuePosition = old.queuePosition;
      }
      list[at] = task;
      return;
    }
    if (!matches || refused) return; // no rows under a query the Host refused
    const request = options.query();
    const before = BigInt(request.beforeTaskId ?? 0);
    if (before && task.taskId >= before) return;
    const limit = requests().reduce((sum, r) => sum + (r.limit || 100), 0);
    let index = list.findIndex((t) => t.taskId < task.taskId);
    if (index < 0) index = list.length;
    if (index >= limit) return; // it belongs to an older page
    list.splice(index, 0, task);
    if (list.length > limit) list.pop();
  }

  const feed = useTaskFeed(
    (task) => {
      upsert(task);
      options.onEvent?.(task);
    },
    () => {
      options.onOpen?.();
      return reload();
    },
  );

  function requests(): TaskQuery[] {
    return [options.query(), ...(options.alsoQuery ? [options.alsoQuery()] : [])];
  }

  async function reload(): Promise<void> {
    const mine = ++query;
    const asked = requests();
    try {
      await feed.relist(
        () => Promise.all(asked.map((request) => api.tasks.listTasks(request))),
        (answers) => {
          if (mine !== query) return false;
          const byId = new Map(answers.flatMap((a) => a.tasks).map((t) => [t.taskId, t]));
          tasks.value = [...byId.values()].sort((a, b) => (a.taskId < b.taskId ? 1 : -1));
          readOn.value = answers[0]?.nextBeforeTaskId ?? 0n;
          error.value = "";
          refused = false;
          return true;
        },
      );
    } catch (failure) {
      if (mine !== query) return;
      error.value = errorMessage(failure);
      // The Host's refusal: the rows listed before (another query, another role) may be
      // ones it no longer shows this user. A Host away keeps them while the page reconnects.
      refused = !isUnreachable(failure);
      if (refused) {
        tasks.value = [];
        readOn.value = 0n;
      }
    } finally {
      if (mine === query) loaded.value = true;
    }
  }

  return { tasks, loaded, error, liveError: feed.error, reload, upsert, readOn };
}

/** How often a page showing a queued task asks for its position again: other users' tasks
 * move the queue too, and WatchTasks tells a user only of their own. */
export const QUEUE_POLL_MS = 5000;

/** ``reload`` at most once a second while ``needed()``: for the queue positions of pending
 * rows, which change when other tasks join or leave the queue (events carry none). Also
 * every QUEUE_POLL_MS while needed, for the tasks this user is not told of. */
export function useQueueRefresh(reload: () => void, needed: () => boolean) {
  const soon = useSoon(() => {
    if (needed()) reload();
  }, 1000);
  useEvery(() => needed() && reload(), QUEUE_POLL_MS);
  return (task: Task) => {
    if (movesQueue(task) && needed()) soon();
  };
}
