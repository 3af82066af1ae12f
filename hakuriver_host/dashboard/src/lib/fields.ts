// Helpers for the task pages: splitting a command line as a shell would, KEY=VALUE lines,
// which form field a Host message names (and showing it there), how a task's command is
// shown, and who may control a task.
import { Code, ConnectError } from "@connectrpc/connect";
import { reactive, ref } from "vue";
import { type Task, TaskKind, TaskStatus } from "../gen/hakuriver/v1/task_pb";
import { statusName } from "./format";
import { api, can, errorMessage, Role, session } from "./api";
import { confirmAction } from "./confirm";

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
// messages for a submission ("cores: must be between 1 and 4096, got -1"); see admission.py and
// scheduler.never_fits. A placement problem says "target:" and is shown by the target field.
const FIELD_ALIASES: Record<string, string> = { target: "targets" };

/** The form field a Host message names, when it is one of ``fields``; else null. */
export function fieldOf(message: string, fields: readonly string[]): string | null {
  const match = /^([a-z_]+):/.exec(message);
  if (!match) return null;
  const field = FIELD_ALIASES[match[1]] ?? match[1];
  return fields.includes(field) ? field : null;
}

/** A problem with one form field, found before asking the Host. */
export class FieldProblem extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

/** ``parse(text)``, its failure a FieldProblem naming ``field``. */
export function parsed<T>(field: string, parse: (text: string) => T, text: string): T {
  try {
    return parse(text);
  } catch (failure) {
    throw new FieldProblem(field, `${field}: ${(failure as Error).message}`);
  }
}

const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;

/** An integer field (a proto int32): undefined when empty; throws a FieldProblem naming it
 * when it is not a whole number or out of that range (the request could not be encoded). */
export function integer(field: string, value: string | number): number | undefined {
  const text = String(value).trim();
  if (text === "") return undefined;
  const n = Number(text);
  if (!Number.isInteger(n)) throw new FieldProblem(field, `${field}: must be a whole number`);
  if (n < INT32_MIN || n > INT32_MAX) {
    throw new FieldProblem(field, `${field}: ${text} is out of range (${INT32_MIN} to ${INT32_MAX})`);
  }
  return n;
}

/** Number inputs of ``form`` (ids PREFIX-FIELD) whose text the browser could not read as a
 * number ("2e", "1,5"): their value is then "", which would silently mean the default.
 * Throws a FieldProblem naming the first such field. */
export function checkNumberInputs(form: Element | null, prefix: string): void {
  for (const input of form?.querySelectorAll<HTMLInputElement>("input[type=number]") ?? []) {
    if (!input.validity.badInput) continue;
    const field = input.id.startsWith(`${prefix}-`) ? input.id.slice(prefix.length + 1) : input.id;
    throw new FieldProblem(field, `${field}: not a number`);
  }
}

/**
 * A form's error messages: ``errors[field]`` under the field a message names (one of
 * ``fields``: a FieldProblem, or the Host's own message, which names the field first), the
 * rest in ``general``. ``attempt(work)`` clears them, marks the form ``busy`` while
 * ``work`` runs, and shows what it throws.
 */
export function useFieldErrors<F extends string>(fields: readonly F[]) {
  const errors = reactive<Partial<Record<F, string>>>({}) as Partial<Record<F, string>>;
  const general = ref("");
  const busy = ref(false);

  function show(failure: unknown): void {
    const message = errorMessage(failure);
    const field = failure instanceof FieldProblem ? failure.field : fieldOf(message, fields);
    if (field && (fields as readonly string[]).includes(field)) errors[field as F] = message;
    else general.value = message;
  }

  async function attempt(work: () => Promise<void>): Promise<void> {
    for (const field of fields) delete errors[field];
    general.value = "";
    busy.value = true;
    try {
      await work();
    } catch (failure) {
      show(failure);
    } finally {
      busy.value = false;
    }
  }

  return { errors, general, busy, attempt };
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

/** Whether the signed-in user may kill, pause or resume ``task``: theirs, or an operator. */
export function mayControl(task: Pick<Task, "owner">): boolean {
  return task.owner === session.user || can(Role.OPERATOR);
}

/** As the Host's task_machine.KILLABLE: an unknown task (its Runner away) is killed at once. */
export const KILLABLE = new Set([
  TaskStatus.PENDING,
  TaskStatus.ASSIGNING,
  TaskStatus.RUNNING,
  TaskStatus.PAUSED,
  TaskStatus.UNKNOWN,
]);

export type TaskAction = "kill" | "pause" | "resume";

/** Kill, pause or resume a task; the task as the Host answers (its watch streams bring
 * the change too). */
export async function controlTask(taskId: bigint, action: TaskAction): Promise<Task | undefined> {
  const request = { taskId };
  const answer =
    action === "kill"
      ? await api.tasks.killTask(request)
      : action === "pause"
        ? await api.tasks.pauseTask(request)
        : await api.tasks.resumeTask(request);
  return answer.task;
}

/** Ask before killing ``task`` (stopping a VPS), naming it: its command (or VPS), owner
 * and node. True: go on. */
export function confirmKill(task: Task): Promise<boolean> {
  const vps = task.kind === TaskKind.VPS;
  const what = vps ? `VPS ${task.taskId}` : `task ${task.taskId}`;
  const where = task.assignedNode ? ` on ${task.assignedNode}` : "";
  const whose = task.owner && task.owner !== session.user ? `${task.owner}'s ` : "";
  const lost = vps
    ? "Its container and everything in it are removed; this cannot be undone."
    : "Its process is stopped for good; this cannot be undone.";
  return confirmAction({
    title: `${vps ? "Stop" : "Kill"} ${what}?`,
    detail: `${whose}${vps ? `VPS (${task.containerName})` : commandLine(task)}${where}, ${
      statusName(task.status)}.\n${lost}`,
    action: vps ? "Stop VPS" : "Kill task",
  });
}

const MAX_ID = 2n ** 63n - 1n;

/** A task (or batch) id from a route, form or query ("386997594523435008"): a positive
 * int64, or null when it is not one (a larger number cannot even be sent). */
export function parseTaskId(text: string): bigint | null {
  const digits = text.trim();
  if (!/^[1-9][0-9]{0,18}$/.test(digits)) return null;
  const id = BigInt(digits);
  return id <= MAX_ID ? id : null;
}
