// A shell in a Host environment container: ShellService.Shell over the Host's /ws/shell
// WebSocket (a browser cannot stream a request body over fetch).
//
// Every frame is one binary protobuf message: a ShellRequest up (first `start`, then stdin
// bytes and resizes), a ShellResponse down (output, and last the exit code). The token goes
// as the subprotocol "bearer.<token>" beside "hakuriver.shell.v1": a browser cannot set
// headers on a WebSocket, and a URL would end up in logs. When the Host refuses or the call
// fails it closes with 4000 + the gRPC status code and its message as the close reason.
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import {
  ShellRequestSchema,
  ShellResponseSchema,
} from "../gen/hakuriver/v1/shell_service_pb";
import { refusedElsewhere, session } from "./api";

export const SHELL_PROTOCOL = "hakuriver.shell.v1";
const STATUS_CLOSE_BASE = 4000;

/** How a session ended: the process exited (with its code), or the Host closed it. */
export type ShellEnd =
  | { kind: "exited"; exitCode: number }
  | { kind: "failed"; message: string; code: number };

export interface ShellHandlers {
  /** The socket is open and the start message has gone out. */
  onOpen?: () => void;
  /** Bytes the process wrote (with a TTY, stdout and stderr together). */
  onOutput: (data: Uint8Array) => void;
  /** Called once, when the session is over. */
  onEnd: (end: ShellEnd) => void;
}

export interface ShellOptions {
  /** Environment name whose Host container to enter. */
  name: string;
  rows: number;
  cols: number;
  /** Command to run; empty means the container's /bin/sh. */
  command?: string[];
}

/** A readable reason for a WebSocket close that did not follow an exit code. */
function closeReason(event: CloseEvent): string {
  if (event.code >= STATUS_CLOSE_BASE && event.code < STATUS_CLOSE_BASE + 100) {
    const status = Code[event.code - STATUS_CLOSE_BASE] ?? `status ${event.code - STATUS_CLOSE_BASE}`;
    return event.reason || `the Host refused the shell (${status})`;
  }
  if (event.code === 1008) return event.reason || "the Host refused the connection (policy)";
  if (event.code === 1000) return event.reason || "the Host ended the session";
  return event.reason || `the connection to the Host was lost (code ${event.code})`;
}

export class ShellSession {
  private readonly socket: WebSocket;
  private readonly encoder = new TextEncoder();
  private exitCode: number | null = null;
  private ended = false;
  /** The terminal's size, sent with start (a resize before the socket opens updates it). */
  private size: { rows: number; cols: number };
  /** Keystrokes typed before the socket opened. */
  private readonly typedEarly: Uint8Array[] = [];

  constructor(options: ShellOptions, private readonly handlers: ShellHandlers) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const token = session.token;
    this.socket = new WebSocket(`${scheme}://${location.host}/ws/shell`, [
      SHELL_PROTOCOL,
      `bearer.${token}`,
    ]);
    this.socket.binaryType = "arraybuffer";
    this.size = { rows: options.rows, cols: options.cols };
    this.socket.onopen = () => {
      this.send({
        case: "start",
        value: {
          name: options.name,
          command: options.command ?? [],
          tty: true,
          size: this.size,
          env: { TERM: "xterm-256color" },
        },
      });
      // What was typed while the socket opened goes out now, after start.
      for (const bytes of this.typedEarly.splice(0)) this.send({ case: "stdin", value: bytes });
      handlers.onOpen?.();
    };
    this.socket.onmessage = (event: MessageEvent) => {
      if (!(event.data instanceof ArrayBuffer)) return;
      const response = fromBinary(ShellResponseSchema, new Uint8Array(event.data));
      if (response.payload.case === "output") {
        handlers.onOutput(response.payload.value.data);
      } else if (response.payload.case === "exitCode") {
        this.exitCode = response.payload.value;
      }
    };
    this.socket.onclose = (event: CloseEvent) => {
      if (this.exitCode !== null && event.code === 1000) {
        this.finish({ kind: "exited", exitCode: this.exitCode });
      } else {
        this.finish({ kind: "failed", message: closeReason(event), code: event.code });
        const status = event.code - STATUS_CLOSE_BASE;
        if (status > 0 && status < 100) refusedElsewhere(status, closeReason(event), token);
      }
    };
  }

  /** Whether keystrokes can go out now. */
  get open(): boolean {
    return this.socket.readyState === WebSocket.OPEN && !this.ended;
  }

  /** Keystrokes or pasted text for the process's standard input. */
  input(data: string | Uint8Array): void {
    const bytes = typeof data === "string" ? this.encoder.encode(data) : data;
    if (!bytes.length || this.ended) return;
    if (this.socket.readyState === WebSocket.CONNECTING) this.typedEarly.push(bytes);
    else this.send({ case: "stdin", value: bytes });
  }

  /** The terminal's new size (the process gets SIGWINCH). */
  resize(rows: number, cols: number): void {
    this.size = { rows, cols };
    this.send({ case: "resize", value: { rows, cols } });
  }

  /** Leave. Standard input is closed first: that ends the Host's attachment to the
   * process at once (a bare disconnect leaves its reader waiting on the process). */
  close(): void {
    if (this.socket.readyState === WebSocket.OPEN && !this.ended) {
      this.send({ case: "closeStdin", value: true });
    }
    this.ended = true;
    if (this.socket.readyState === WebSocket.CONNECTING || this.socket.readyState === WebSocket.OPEN) {
      this.socket.close(1000);
    }
  }

  private send(payload: MessageInitShape<typeof ShellRequestSchema>["payload"]): void {
    if (this.socket.readyState !== WebSocket.OPEN) return;
    this.socket.send(toBinary(ShellRequestSchema, create(ShellRequestSchema, { payload })));
  }

  private finish(end: ShellEnd): void {
    if (this.ended) return;
    this.ended = true;
    this.handlers.onEnd(end);
  }
}
