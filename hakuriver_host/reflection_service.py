"""gRPC server reflection, as ``grpc.reflection.v1`` and the older ``v1alpha``.

grpcio-reflection serves only ``v1alpha``; clients try ``v1`` first (grpcurl, buf curl,
Postman), and some ask nothing else. The two protocols differ only in their package: the
same messages, field for field, so one servicer answers both, its ``v1alpha`` messages
read and written under the ``v1`` method's name. The ``v1`` file is made from the
``v1alpha`` one and added to the descriptor pool, so that reflection describes itself in
both.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1_PACKAGE = "grpc.reflection.v1"
SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
V1ALPHA_SERVICE_NAME = reflection.SERVICE_NAME
METHOD = "ServerReflectionInfo"


def _v1_service() -> ServiceDescriptor:
    """The ``v1`` service, its file (``grpc/reflection/v1/reflection.proto``) added to the
    default pool unless already there (a grpcio-reflection that ships it)."""
    pool = descriptor_pool.Default()
    try:
        return pool.FindServiceByName(SERVICE_NAME)
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    alpha = f".{proto.package}."
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = V1_PACKAGE
    proto.options.Clear()
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"
    proto.options.java_multiple_files = True
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"

    def renamed(type_name: str) -> str:
        return type_name.replace(alpha, f".{V1_PACKAGE}.", 1)

    for message in proto.message_type:
        for field in message.field:
            if field.type_name:
                field.type_name = renamed(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type = renamed(method.input_type)
            method.output_type = renamed(method.output_type)
    pool.AddSerializedFile(proto.SerializeToString())
    return pool.FindServiceByName(SERVICE_NAME)


SERVICE = _v1_service()


def enable(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection of ``service_names`` (and of itself) on ``server``, both versions."""
    names = (*service_names, SERVICE_NAME, V1ALPHA_SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, {METHOD: handler}),)
    )
