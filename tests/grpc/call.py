"""A gRPC client (grpcio): one unary call of METHOD (`/package.Service/Method`) at TARGET with
an empty message, plaintext HTTP/2, 2 s deadline. Prints the outcome's code name and its
details on one line (`OK` and the answer's length when it succeeded).

Usage: call.py TARGET METHOD
"""
import sys

import grpc


def main() -> None:
    target, method = sys.argv[1], sys.argv[2]
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method)
        try:
            answer = call(b"", timeout=2)
            print(f"OK {len(answer)}", flush=True)
        except grpc.RpcError as err:
            print(f"{err.code().name} {err.details()}", flush=True)


main()
