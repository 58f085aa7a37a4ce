"""A gRPC server (grpcio) with grpcio's own health servicer, for the root tests of lbd's gRPC
health checks and of gRPC through the proxy.

Usage: health_server.py PORT [MAX_CONNECTION_AGE_MS]

Serves plaintext HTTP/2 (h2c) on PORT. The whole server ("") and the service "sluice.Echo"
start SERVING; SIGUSR1 sets both NOT_SERVING, SIGUSR2 SERVING again. With
MAX_CONNECTION_AGE_MS, each connection is closed that long after it opened, gracefully (gRPC's
MAX_CONNECTION_AGE: a GOAWAY, then the calls in flight finish within a second). Prints "ready"
once it listens.
"""
import signal
import sys
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICES = ("", "sluice.Echo")


def main() -> None:
    port = int(sys.argv[1])
    options = []
    if len(sys.argv) > 2:
        options = [
            ("grpc.max_connection_age_ms", int(sys.argv[2])),
            ("grpc.max_connection_age_grace_ms", 1000),
        ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)

    def set_all(status: int) -> None:
        for service in SERVICES:
            servicer.set(service, status)

    set_all(health_pb2.HealthCheckResponse.SERVING)
    signal.signal(signal.SIGUSR1, lambda *_: set_all(health_pb2.HealthCheckResponse.NOT_SERVING))
    signal.signal(signal.SIGUSR2, lambda *_: set_all(health_pb2.HealthCheckResponse.SERVING))
    server.add_insecure_port(f"0.0.0.0:{port}")
    server.start()
    print("ready", flush=True)
    # Signal handlers run in the main thread, between its sleeps.
    while True:
        time.sleep(0.1)


main()
