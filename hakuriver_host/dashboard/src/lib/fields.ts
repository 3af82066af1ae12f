// Helpers for the task pages: splitting a command line as a shell would, KEY=VALUE lines,
// which form field a Host message names, the choices a submit form offers, and how a task's
// command and resources are shown.
import { Code, ConnectError } from "@connectrpc/connect";
import type { Node } from "../gen/hakuriver/v1/node_pb";
import { type Task, TaskStatus } from "../gen/hakuriver/v1/task_pb";
import { api } from "./api";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { bytes, duration } from "./format";

/** Split a command line into words like a POSIX shell (without expansions): blanks
 * separate words; '...' keeps everything literally; "..." keeps everything but lets a
 * backslash escape $ ` " \ and newline; a backslash outside quotes escapes any character.
 * So `sh -c 'echo "a b"; ls'` gives ["sh", "-c", `echo "a b"; ls`]. Throws on an open
 * quote or a trailing backslash. */
export function shellWords(line: string): string[] {
  const words: string[] = [];
  let word = "";
  let inWord = false;
  let i = 0;
  while (i < line.length) {
    const c = line[i];
    if (c === "'") {
      const end = line.indexOf("'", i + 1);
      if (end < 0) throw new Error("unterminated single quote");
      word += line.slice(i + 1, end);
      inWord = true;
      i = end + 1;
    } else if (c === '"') {
      i += 1;
      let closed = false;
      while (i < line.length) {
        const d = line[i];
        if (d === '"') {
          closed = true;
          i += 1;
          break;
        }
        if (d === "\\" && i + 1 < line.length && '$`"\\\n'.includes(line[i + 1])) {
          if (line[i + 1] !== "\n") word += line[i + 1];
          i += 2;
          continue;
        }
        word += d;
        i += 1;
      }
      if (!closed) throw new Error("unterminated double quote");
      inWord = true;
    } else if (c === "\\") {
      if (i + 1 >= line.length) throw new Error("trailing backslash");
      if (line[i + 1] !== "\n") {
        word += line[i + 1];
        inWord = true;
      }
      i += 2;
    } else if (c === " " || c === "\t" || c === "\n" || c === "\r") {
      if (inWord) words.push(word);
      word = "";
      inWord = false;
      i += 1;
    } else {
      word += c;
      inWord = true;
      i += 1;
    }
  }
  if (inWord) words.push(word);
  return words;
}

/** One word quoted for a shell when it needs it (the inverse of shellWords). */
export function shellQuote(word: string): string {
  if (word !== "" && /^[A-Za-z0-9_@%+=:,./-]+$/.test(word)) return word;
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

/** A task's command line as one would type it. */
export function commandLine(task: Pick<Task, "command" | "arguments">): string {
  return [task.command, ...task.arguments].map(shellQuote).join(" ");
}

/** KEY=VALUE lines (blank lines and # comments skipped) as a map; throws naming the line. */
export function parseEnv(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  text.split("\n").forEach((raw, index) => {
    const line = raw.trim();
    if (!line || line.startsWith("#")) return;
    const eq = line.indexOf("=");
    if (eq <= 0) throw new Error(`line ${index + 1}: expected KEY=VALUE, got ${JSON.stringify(line)}`);
    env[line.slice(0, eq).trim()] = line.slice(eq + 1);
  });
  return env;
}

// The Host names the field first in its INVALID_ARGUMENT / NOT_FOUND / PERMISSION_DENIED
// messages for a submission ("cores: must be at least 1, got -1"); see admission.py and
// scheduler.never_fits. A placement problem says "target:" and is shown by the target field.
const FIELD_ALIASES: Record<string, string> = { target: "targets" };

/** The form field a Host message names, when it is one of ``fields``; else null. */
export function fieldOf(message: string, fields: readonly string[]): string | null {
  const match = /^([a-z_]+):/.exec(message);
  if (!match) return null;
  const field = FIELD_ALIASES[match[1]] ?? match[1];
  return fields.includes(field) ? field : null;
}

/** Errors worth retrying (the Host restarting) versus answers that will not change. */
export function isFinalAnswer(error: unknown): boolean {
  return (
    error instanceof ConnectError &&
    [
      Code.NotFound,
      Code.PermissionDenied,
      Code.InvalidArgument,
      Code.FailedPrecondition,
      Code.Unauthenticated,
    ].includes(error.code)
  );
}

export interface Choices {
  nodes: Node[];
  /** Environment names: tarballs plus images the Runners have loaded. */
  environments: string[];
}

/** What a submit form can offer: the nodes and the environments. The environments are
 * the tarballs (ListTars) and the images Runners report loaded (ListNodes); either list
 * alone still gives a usable form, so only both failing is an error. */
export async function loadChoices(): Promise<Choices> {
  const [listed, tarred] = await Promise.allSettled([
    api.nodes.listNodes({}),
    api.environments.listTars({}),
  ]);
  if (listed.status === "rejected" && tarred.status === "rejected") throw listed.reason;
  const nodes = listed.status === "fulfilled" ? listed.value : { nodes: [] };
  const names = new Set<string>();
  if (tarred.status === "fulfilled") for (const tar of tarred.value.tarballs) names.add(tar.name);
  for (const node of nodes.nodes) for (const env of node.environments) names.add(env);
  return {
    nodes: [...nodes.nodes].sort((a, b) => a.hostname.localeCompare(b.hostname)),
    environments: [...names].sort(),
  };
}

/** "2 cores · 4.0 GiB · GPU 0,1" */
export function resources(task: Task): string {
  const parts = [`${task.requiredCores} ${task.requiredCores === 1 ? "core" : "cores"}`];
  parts.push(task.requiredMemoryBytes > 0n ? bytes(task.requiredMemoryBytes) : "no mem limit");
  if (task.requiredGpus.length) parts.push(`GPU ${task.requiredGpus.join(",")}`);
  else if (task.gpuCount) parts.push(`${task.gpuCount} GPU`);
  return parts.join(" · ");
}

export const KILLABLE = new Set([
  TaskStatus.PENDING,
  TaskStatus.ASSIGNING,
  TaskStatus.RUNNING,
  TaskStatus.PAUSED,
]);

/** A task id from a route or form ("386997594523435008"), or null when it is not one. */
export function parseTaskId(text: string): bigint | null {
  return /^\d{1,20}$/.test(text.trim()) ? BigInt(text.trim()) : null;
}

/** How long a task ran (or has run so far); "" before it started. Stamps recorded by
 * different clocks can put the end a few ms before the start: that shows as 0.0s. */
export function ranFor(start: Timestamp | undefined, end?: Timestamp): string {
  const text = duration(start, end);
  return text.startsWith("-") ? "0.0s" : text;
}
