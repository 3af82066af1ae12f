// Node data shared by the Home, Nodes, Node detail and GPUs pages.
//
// Health is live: the recent history from GetHealth(include_history) once, then every new
// sample from the WatchHealth stream (no polling); the same stream says when a node goes
// online or offline, or is drained or undrained (a message without a sample), and when the
// Host forgets it (`forgotten`: the node leaves every view at once). The node
// list (reservations, draining, online/offline) is fetched once and again, collapsed,
// when a stream says it changed:
// a WatchHealth status message, or a WatchTasks event of a task placed on or ending on a
// node (useNodes' statusChanged and taskChanged); see useNodes for the slow safety refresh.
import { Code, ConnectError } from "@connectrpc/connect";
import { ref, shallowRef, triggerRef } from "vue";
import type { Health, Node } from "../gen/hakuriver/v1/node_pb";
import { NodeStatus } from "../gen/hakuriver/v1/node_pb";
import type { NodeHealth } from "../gen/hakuriver/v1/node_service_pb";
import type { Task } from "../gen/hakuriver/v1/task_pb";
import { api, errorMessage } from "../lib/api";
import { date, percent } from "../lib/format";
import { useLive } from "../lib/live";
import { changesReservations } from "../lib/taskFeed";
import { useRefresh, useSoon } from "../lib/timers";

/** How much history the pages keep and draw (the Host keeps at least 10 minutes). */
export const WINDOW_MS = 10 * 60 * 1000;

/** The safety refresh of the node list: for what no stream reports (another user's task
 * placed or ended, since users watch only their own tasks; a Runner's loaded
 * environments). Everything else comes from the streams. */
export const SAFETY_REFRESH_MS = 30_000;

/** How long a burst of stream events is collected before the node list is fetched again. */
const NODES_SOON_MS = 300;

export interface Sample {
  /** sampled_at in ms since the epoch. */
  t: number;
  health: Health;
}

export interface NodeTrack {
  hostname: string;
  status: NodeStatus;
  /** Oldest first, at most WINDOW_MS older than the newest sample of any node. A new
   * array at each change: a computed or a prop that passes it on sees the change. */
  samples: Sample[];
}

export function sampleTime(health: Health | undefined): number {
  return date(health?.sampledAt)?.getTime() ?? NaN;
}

export interface HealthOptions {
  /** Awaited first: false means do not watch at all (a node the node list does not have,
   * so the page need not provoke a NotFound). */
  gate?: () => Promise<boolean>;
  /** A node went online or offline (a WatchHealth message without a sample), or its
   * sample reads other GPUs than its last one that read any (status UNSPECIFIED): one
   * dropped out or is read again, which changes the node list's unreadGpus; or the Host
   * forgot it (``forgotten``). */
  onStatus?: (hostname: string, status: NodeStatus, forgotten?: boolean) => void;
}

/**
 * Live health of one node (``hostname``) or of all nodes: ``tracks`` maps hostname to its
 * recent samples and status. ``missing`` turns true when the Host does not know
 * ``hostname``. A message without a sample only updates the track's status (and is told
 * to ``onStatus``): it adds no sample.
 */
export function useHealth(hostname = "", { gate, onStatus }: HealthOptions = {}) {
  const tracks = shallowRef(new Map<string, NodeTrack>());
  const loaded = ref(false);
  const missing = ref(false);

  function track(name: string, status: NodeStatus): NodeTrack {
    let entry = tracks.value.get(name);
    if (!entry) {
      entry = { hostname: name, status, samples: [] };
      tracks.value.set(name, entry);
    }
    if (status !== NodeStatus.UNSPECIFIED) entry.status = status;
    return entry;
  }

  /** Insert in time order, ignoring a sample already held. */
  function add(entry: NodeTrack, health: Health): void {
    const t = sampleTime(health);
    if (!Number.isFinite(t)) return;
    const samples = entry.samples;
    let i = samples.length;
    while (i > 0 && samples[i - 1]!.t > t) i--;
    if (i > 0 && samples[i - 1]!.t === t) return;
    samples.splice(i, 0, { t, health });
  }

  function trim(): void {
    let newest = -Infinity;
    for (const entry of tracks.value.values()) {
      const last = entry.samples[entry.samples.length - 1];
      if (last) newest = Math.max(newest, last.t);
    }
    const cutoff = newest - WINDOW_MS;
    for (const entry of tracks.value.values()) {
      const drop = entry.samples.findIndex((s) => s.t >= cutoff);
      if (drop > 0) entry.samples = entry.samples.slice(drop);
      else if (drop < 0 && entry.samples.length) entry.samples = [];
    }
  }

  /** The GPU indices of the track's latest sample that read any, as "0,2,3"; "" if none. */
  function lastRead(entry: NodeTrack): string {
    for (let i = entry.samples.length - 1; i >= 0; i--) {
      const gpus = entry.samples[i]!.health.gpus;
      if (gpus.length) return gpus.map((g) => g.index).join(",");
    }
    return "";
  }

  function receive(node: NodeHealth | undefined, history: Health[] = []): void {
    if (!node) return;
    const entry = track(node.hostname, node.status);
    const read = node.current?.gpus.map((g) => g.index).join(",");
    const before = lastRead(entry);
    if (read && before && read !== before) onStatus?.(node.hostname, NodeStatus.UNSPECIFIED);
    entry.samples = entry.samples.slice(); // a new array (NodeTrack.samples), then added to
    for (const health of history) add(entry, health);
    if (node.current) add(entry, node.current);
  }

  const live = useLive(async (signal) => {
    if (gate && !(await gate())) {
      missing.value = true;
      loaded.value = true;
      return;
    }
    // Read the history once the Host says the watch is in place (send_watching), so no
    // sample or change of status falls between the two (a node going offline then was
    // never shown); duplicates are dropped by add().
    const local = new AbortController();
    const stop = () => local.abort();
    signal.addEventListener("abort", stop);
    try {
      const stream = api.nodes.watchHealth(
        { hostname, sendWatching: true },
        { signal: local.signal },
      );
      const iterator = stream[Symbol.asyncIterator]();
      const watching = await iterator.next();
      if (watching.done) throw new Error("the Host ended the health stream");
      const now = await api.nodes.getHealth({ hostname, includeHistory: true }, { signal });
      for (const node of now.nodes) receive(node, node.history);
      trim();
      loaded.value = true;
      live.error.value = ""; // (re)connected: useLive keeps a failure until consume ends
      triggerRef(tracks);
      for (let next = await iterator.next(); !next.done; next = await iterator.next()) {
        const { node, forgotten } = next.value;
        if (node && forgotten) tracks.value.delete(node.hostname);
        else receive(node);
        if (node && !node.current) onStatus?.(node.hostname, node.status, forgotten);
        trim();
        triggerRef(tracks);
      }
      // The Host ended the stream without an error (shutting down): useLive reopens it.
      throw new Error("the Host ended the health stream");
    } catch (failure) {
      if (hostname && failure instanceof ConnectError && failure.code === Code.NotFound) {
        missing.value = true;
        loaded.value = true;
        return;
      }
      throw failure;
    } finally {
      signal.removeEventListener("abort", stop);
      local.abort();
    }
  });

  return { tracks, loaded, missing, error: live.error };
}

/**
 * The node list, live. Fetched once, then again (collapsed into one fetch per
 * NODES_SOON_MS) when the page's streams say something it shows changed: pass WatchHealth
 * status messages and GPU readings changes to ``statusChanged`` (the status is also set at
 * once) and WatchTasks
 * events to ``taskChanged`` (a task placed on or ending on a node changes its free cores,
 * memory, GPUs and active tasks). A slow safety refresh (SAFETY_REFRESH_MS) catches what
 * no stream reports.
 */
export function useNodes() {
  const nodes = ref<Node[]>([]);
  const loaded = ref(false);
  const error = ref("");
  const { refresh } = useRefresh(async () => {
    try {
      nodes.value = (await api.nodes.listNodes({})).nodes;
      error.value = "";
    } catch (failure) {
      error.value = errorMessage(failure);
    } finally {
      loaded.value = true;
    }
  }, SAFETY_REFRESH_MS);
  const soon = useSoon(() => void refresh(), NODES_SOON_MS);

  /** A forgotten node goes at once: its row would stay until the next fetch. */
  function statusChanged(hostname: string, status: NodeStatus, forgotten = false): void {
    if (forgotten) nodes.value = nodes.value.filter((n) => n.hostname !== hostname);
    const node = nodes.value.find((n) => n.hostname === hostname);
    if (node && status !== NodeStatus.UNSPECIFIED) node.status = status;
    soon();
  }

  function taskChanged(task: Task): void {
    if (changesReservations(task)) soon();
  }

  // A stream that reopens may have missed events: fetch again (not at the first opening,
  // which the first fetch already covers).
  let opened = false;
  async function streamOpened(): Promise<void> {
    if (opened) await refresh();
    opened = true;
  }

  return { nodes, loaded, error, refresh, statusChanged, taskChanged, streamOpened };
}

/** A percentage for charts and tables: "0%", "4.2%", "57%". */
export function pct(value: number): string {
  return value === 0 ? "0%" : percent(value);
}

/** "4s ago", "3m ago", "2h ago". */
export function ago(ms: number, now: number): string {
  if (!Number.isFinite(ms)) return "never";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ago`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ago`;
  return `${Math.floor(h / 24)}d ago`;
}

/** CPU ids as ranges: [0,1,2,3,8] -> "0-3, 8". */
export function cpuRanges(cpus: readonly number[]): string {
  const sorted = [...cpus].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j]! + 1) j++;
    parts.push(i === j ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  return parts.join(", ");
}

/** The usual interval between a node's samples (median), or 5 s when unknown. */
export function sampleInterval(tracks: Iterable<NodeTrack>): number {
  const steps: number[] = [];
  for (const entry of tracks) {
    const s = entry.samples;
    for (let i = Math.max(1, s.length - 30); i < s.length; i++) steps.push(s[i]!.t - s[i - 1]!.t);
  }
  if (!steps.length) return 5000;
  steps.sort((a, b) => a - b);
  return Math.max(1000, steps[Math.floor(steps.length / 2)]!);
}

export interface ClusterPoint {
  t: number;
  /** Mean CPU % over the nodes reporting. */
  cpu: number;
  memoryUsed: number;
  memoryTotal: number;
  nodes: number;
}

/**
 * Cluster-wide samples: nodes report at their own moments, so time is cut into buckets
 * of one sample interval, and each bucket takes every node's latest sample at its end
 * (carried forward, but not when older than three intervals: a silent node drops out).
 */
export function aggregate(tracks: Iterable<NodeTrack>): ClusterPoint[] {
  const list = [...tracks].filter((e) => e.samples.length > 0);
  if (!list.length) return [];
  const step = sampleInterval(list);
  let first = Infinity;
  let last = -Infinity;
  for (const entry of list) {
    first = Math.min(first, entry.samples[0]!.t);
    last = Math.max(last, entry.samples[entry.samples.length - 1]!.t);
  }
  const cursor = list.map(() => -1);
  const points: ClusterPoint[] = [];
  for (let end = (Math.floor(first / step) + 1) * step; ; end += step) {
    const at = Math.min(end, last);
    let cpu = 0;
    let used = 0;
    let total = 0;
    let count = 0;
    list.forEach((entry, k) => {
      const s = entry.samples;
      while (cursor[k]! + 1 < s.length && s[cursor[k]! + 1]!.t <= at) cursor[k] = cursor[k]! + 1;
      const sample = s[cursor[k]!];
      if (!sample || at - sample.t > 3 * step) return;
      cpu += sample.health.cpuPercent;
      used += Number(sample.health.memoryUsedBytes);
      total += Number(sample.health.memoryTotalBytes);
      count += 1;
    });
    if (count) points.push({ t: at, cpu: cpu / count, memoryUsed: used, memoryTotal: total, nodes: count });
    if (end >= last) break;
  }
  return points;
}

export function isOnline(node: { status: NodeStatus }): boolean {
  return node.status === NodeStatus.ONLINE;
}

/** GPUs a new task could get: held by no task and read (an unread one is given to none). */
export function freeGpus(node: Node): number {
  const taken = new Set([...node.allocatedGpus, ...node.unreadGpus]);
  return node.gpus.filter((g) => !taken.has(g.index)).length;
}

/** "GPU 1, 3 not read" for the GPUs that dropped out of the node's readings, else "". */
export function unreadNote(node: Node): string {
  return node.unreadGpus.length ? `GPU ${node.unreadGpus.join(", ")} not read` : "";
}

export { NodeStatus };
