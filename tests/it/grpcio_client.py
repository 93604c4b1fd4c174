"""The Python grpcio client over mutual TLS: one grpc.health.v1.Health/Check.

Usage: grpcio_client.py ADDR CA_PEM CERT_PEM KEY_PEM
Prints the serving status number and exits 0 when the call succeeds; prints the error and
exits 1 otherwise. No generated code: the request (service "") is the empty message and the
answer is decoded by hand (field 1, a varint).
"""

import sys

import grpc


def main() -> int:
    addr, ca, cert, key = sys.argv[1:5]
    read = lambda p: open(p, "rb").read()
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert)
    )
    with grpc.secure_channel(addr, creds) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        try:
            answer = check(b"", timeout=10)
        except grpc.RpcError as e:
            print(f"error: {e.code()} {e.details()}")
            return 1
    status = answer[1] if len(answer) >= 2 and answer[0] == 0x08 else 0
    print(f"status {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
