// Submit a command task to a HakuRiver Host over gRPC, print its standard output as it is
// written, and exit with the task's exit code (1 when it ended without one: killed, lost).
//
//   HAKURIVER_HOST=https://127.0.0.1:8000 HAKURIVER_CA=~/.hakuriver/tls/ca.pem \
//   HAKURIVER_TOKEN=$(cat ~/.hakuriver/credentials) node dist/client.js -- echo hello
//
// The stubs are generated from protos/ by buf with protoc-gen-es (`make protos`), like the
// dashboard's; the transport is @connectrpc/connect-node's gRPC over HTTP/2 with TLS.
import { readFileSync } from "node:fs";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { LogService } from "./gen/hakuriver/v1/log_service_pb.js";
import { TaskService } from "./gen/hakuriver/v1/task_service_pb.js";
import { LogStream, TaskKind, TaskStatus } from "./gen/hakuriver/v1/task_pb.js";

function setting(name: string): string {
  const value = process.env[name];
  if (!value) {
    console.error(`error: set ${name}`);
    process.exit(2);
  }
  return value;
}

async function main(argv: string[]): Promise<number> {
  const command = argv[0] === "--" ? argv.slice(1) : argv;
  if (command.length === 0) {
    console.error("usage: client.js -- CMD [ARGS...]");
    return 2;
  }
  const token = setting("HAKURIVER_TOKEN");
  const bearer: Interceptor = (next) => async (request) => {
    request.header.set("authorization", `Bearer ${token}`);
    return next(request);
  };
  const transport = createGrpcTransport({
    baseUrl: setting("HAKURIVER_HOST"),
    nodeOptions: { ca: readFileSync(setting("HAKURIVER_CA")) },
    interceptors: [bearer],
  });
  const tasks = createClient(TaskService, transport);
  const logs = createClient(LogService, transport);

  const submitted = await tasks.submitTask({
    kind: TaskKind.COMMAND,
    command: command[0],
    arguments: command.slice(1),
  });
  const taskId = submitted.tasks[0].taskId;
  console.error(`submitted task ${taskId}`);
  // follow: the stream ends once the task is final and all its output was sent
  for await (const chunk of logs.readLog({ taskId, stream: LogStream.STDOUT, follow: true })) {
    process.stdout.write(chunk.data);
  }
  const { task } = await tasks.getTask({ taskId });
  if (task === undefined) {
    return 1;
  }
  console.error(`task ${taskId}: ${TaskStatus[task.status]}, exit code ${task.exitCode ?? "-"}`);
  // the command's own code when it ran to an exit; 1 when it never did (killed, lost...)
  return task.exitCode ?? (task.status === TaskStatus.COMPLETED ? 0 : 1);
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(`error: ${error instanceof Error ? error.message : String(error)}`);
    process.exit(1);
  },
);
