"""The Open Inference Protocol over gRPC: Triton's ``inference.GRPCInferenceService`` and
the standard ``grpc.health.v1.Health``, on ``CONVLSTM_GRPC_PORT`` in the same process as
HTTP. gRPC only: protobuf in, ``service.dataplane`` calls, protobuf out, and the one error
table mapped to gRPC status codes. The stubs are imported from the package that ships
them (``tritonclient.grpc.service_pb2``, ``grpc_health.v1``), never copied here."""
