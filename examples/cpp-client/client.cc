// Submit a command task to a HakuRiver Host over gRPC, print its standard output as it is
// written, and exit with the task's exit code (1 when it ended without one: killed, lost).
//
//   HAKURIVER_TARGET=127.0.0.1:8000 HAKURIVER_CA=~/.hakuriver/tls/ca.pem \
//   HAKURIVER_TOKEN=$(cat ~/.hakuriver/credentials) ./client -- echo hello
//
// The stubs come from protos/ by buf with protoc's C++ generator and grpc_cpp_plugin
// (buf.gen.yaml here); the Makefile builds them with this file against Debian's libgrpc++.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>

#include <grpcpp/grpcpp.h>

#include "hakuriver/v1/log_service.grpc.pb.h"
#include "hakuriver/v1/task_service.grpc.pb.h"

namespace v1 = hakuriver::v1;

namespace {

std::string Setting(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') {
    std::cerr << "error: set " << name << "\n";
    std::exit(2);
  }
  return value;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    std::cerr << "error: cannot read " << path << "\n";
    std::exit(2);
  }
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A context carrying the API token, as every call needs.
std::unique_ptr<grpc::ClientContext> Authorized(const std::string& token) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->AddMetadata("authorization", "Bearer " + token);
  return context;
}

int Fail(const grpc::Status& status) {
  std::cerr << "error: " << status.error_message() << " (code " << status.error_code() << ")\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  int first = (argc > 1 && std::string(argv[1]) == "--") ? 2 : 1;
  if (first >= argc) {
    std::cerr << "usage: client -- CMD [ARGS...]\n";
    return 2;
  }
  const std::string token = Setting("HAKURIVER_TOKEN");
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = ReadFile(Setting("HAKURIVER_CA"));
  auto channel = grpc::CreateChannel(Setting("HAKURIVER_TARGET"), grpc::SslCredentials(tls));
  auto tasks = v1::TaskService::NewStub(channel);
  auto logs = v1::LogService::NewStub(channel);

  v1::SubmitTaskRequest submit;
  submit.set_kind(v1::TASK_KIND_COMMAND);
  submit.set_command(argv[first]);
  for (int i = first + 1; i < argc; ++i) submit.add_arguments(argv[i]);
  v1::SubmitTaskResponse submitted;
  grpc::Status status = tasks->SubmitTask(Authorized(token).get(), submit, &submitted);
  if (!status.ok()) return Fail(status);
  const int64_t task_id = submitted.tasks(0).task_id();
  std::cerr << "submitted task " << task_id << "\n";

  // follow: the stream ends once the task is final and all its output was sent
  v1::ReadLogRequest read;
  read.set_task_id(task_id);
  read.set_stream(v1::LOG_STREAM_STDOUT);
  read.set_follow(true);
  auto context = Authorized(token);
  auto reader = logs->ReadLog(context.get(), read);
  v1::ReadLogResponse chunk;
  while (reader->Read(&chunk)) {
    std::fwrite(chunk.data().data(), 1, chunk.data().size(), stdout);
    std::fflush(stdout);
  }
  status = reader->Finish();
  if (!status.ok()) return Fail(status);

  v1::GetTaskRequest get;
  get.set_task_id(task_id);
  v1::GetTaskResponse got;
  status = tasks->GetTask(Authorized(token).get(), get, &got);
  if (!status.ok()) return Fail(status);
  const v1::Task& task = got.task();
  std::cerr << "task " << task_id << ": " << v1::TaskStatus_Name(task.status()) << ", exit code "
            << (task.has_exit_code() ? std::to_string(task.exit_code()) : "-") << "\n";
  if (task.has_exit_code()) return task.exit_code();
  return task.status() == v1::TASK_STATUS_COMPLETED ? 0 : 1;
}
