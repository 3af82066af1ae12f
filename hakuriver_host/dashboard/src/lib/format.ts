// How the pages show numbers, times and statuses.
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { type Task, TaskStatus } from "../gen/hakuriver/v1/task_pb";

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

export function bytes(value: bigint | number): string {
  let n = Number(value);
  let unit = 0;
  while (n >= 1024 && unit < UNITS.length - 1) {
    n /= 1024;
    unit += 1;
  }
  return `${n.toFixed(n >= 10 || unit === 0 ? 0 : 1)} ${UNITS[unit]}`;
}

/** The GPUs a task holds ("0,1"), or asks for without naming them ("2×", until it is
 * placed), or "–". */
export function gpusOf(task: Pick<Task, "requiredGpus" | "gpuCount">): string {
  if (task.requiredGpus.length) return task.requiredGpus.join(",");
  return task.gpuCount ? `${task.gpuCount}×` : "–";
}

export function percent(value: number): string {
  return `${value.toFixed(value >= 10 ? 0 : 1)}%`;
}

export function date(stamp: Timestamp | undefined): Date | null {
  return stamp ? new Date(Number(stamp.seconds) * 1000 + stamp.nanos / 1e6) : null;
}

export function time(stamp: Timestamp | undefined): string {
  const when = date(stamp);
  return when ? when.toLocaleString() : "";
}

/** Duration between two stamps (or until ``now``, ms), as "1h 02m", "3m 04s" or "5.2s";
 * "" without a start. Stamps recorded by different clocks can put the end a few ms before
 * the start: that is 0.0s, never negative. */
export function duration(start: Timestamp | undefined, end?: Timestamp, now = Date.now()): string {
  const from = date(start);
  if (!from) return "";
  const ms = Math.max(0, (date(end)?.getTime() ?? now) - from.getTime());
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(Math.floor(s % 60)).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`;
}

/** How long a task has run, for a table or its page: started to completed, or to ``now``
 * while it runs. A paused task's clock does not run on: "paused" in a table, or with
 * ``pausedAt`` (its page reads it from the timeline) how long it ran until then. */
export function taskDuration(
  task: Pick<Task, "status" | "startedAt" | "completedAt">,
  now: number,
  pausedAt?: Timestamp,
): string {
  if (task.status !== TaskStatus.PAUSED) return duration(task.startedAt, task.completedAt, now);
  return pausedAt ? `${duration(task.startedAt, pausedAt)} until paused` : "paused";
}

/** "running" for TASK_STATUS_RUNNING: the names the CLI prints. */
export function statusName(status: TaskStatus): string {
  return (TaskStatus[status] ?? "unknown").toLowerCase();
}

export const FINAL_STATUSES = new Set([
  TaskStatus.COMPLETED,
  TaskStatus.FAILED,
  TaskStatus.KILLED,
  TaskStatus.LOST,
  TaskStatus.KILLED_OOM,
]);
