"""A gRPC client (grpcio): asks TARGET's health service about SERVICE COUNT times over one
channel, plaintext HTTP/2, and prints each answer's status name on a line of its own (an RPC
error as its code's name). Each call has a 2 s deadline.

Usage: health_check.py TARGET SERVICE COUNT   (SERVICE "" for the whole server)
"""
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> None:
    target, service, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(count):
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                print(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status), flush=True)
            except grpc.RpcError as err:
                print(err.code().name, flush=True)


main()
