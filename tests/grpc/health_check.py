"""A gRPC client (grpcio): asks TARGET's health service about SERVICE COUNT times over one
channel, plaintext HTTP/2, and prints each answer's status name on a line of its own (an RPC
error as its code's name). Each call has a 2 s deadline. With THREADS, that many threads call
at once, COUNT calls each.

Usage: health_check.py TARGET SERVICE COUNT [THREADS]   (SERVICE "" for the whole server)
"""
import sys
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> None:
    target, service, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    printing = threading.Lock()
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def calls() -> None:
            for _ in range(count):
                try:
                    answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                    line = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
                except grpc.RpcError as err:
                    line = err.code().name
                with printing:
                    print(line, flush=True)

        callers = [threading.Thread(target=calls) for _ in range(threads)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()


main()
