"""A real HTTP/3 client (aioquic, an implementation apart from lbd's quinn and h3) for the root
tests: sends the requests it is given on one QUIC connection, one after another, and prints each
answer as a line of JSON: {"status", "headers", "interim" (each 1xx answer's fields, with its
":status"), "body"}, or {"reset": code} for a reset stream.

    ask.py ADDRESS PORT SERVER_NAME CA_FILE REQUEST...

Each REQUEST is a JSON object: {"method", "path", "headers": [[name, value], ...], "body"}
(all but "path" optional). Every wait has a timeout: the handshake and each answer 5 s.
"""
import asyncio
import json
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamReset

TIMEOUT = 5.0


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.answers = {}

    def quic_event_received(self, event):
        if isinstance(event, StreamReset) and event.stream_id in self.answers:
            answer = self.answers[event.stream_id]
            answer["reset"] = event.error_code
            if not answer["done"].done():
                answer["done"].set_result(None)
        for h3_event in self.h3.handle_event(event):
            answer = self.answers.get(getattr(h3_event, "stream_id", None))
            if answer is None:
                continue
            if isinstance(h3_event, HeadersReceived):
                status = dict(h3_event.headers).get(b":status", b"")
                if status.startswith(b"1") and not answer["headers"]:
                    answer["interim"].append(fields_of(h3_event.headers))
                else:
                    answer["headers"].extend(h3_event.headers)
            elif isinstance(h3_event, DataReceived):
                answer["body"] += h3_event.data
            if getattr(h3_event, "stream_ended", False) and not answer["done"].done():
                answer["done"].set_result(None)

    async def ask(self, authority, request):
        stream = self._quic.get_next_available_stream_id()
        body = request.get("body", "").encode()
        head = [
            (b":method", request.get("method", "GET").encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", request["path"].encode()),
        ] + [(n.encode(), v.encode()) for n, v in request.get("headers", [])]
        answer = {"headers": [], "interim": [], "body": b"", "done": asyncio.get_running_loop().create_future()}
        self.answers[stream] = answer
        self.h3.send_headers(stream, head, end_stream=not body)
        if body:
            self.h3.send_data(stream, body, end_stream=True)
        self.transmit()
        await asyncio.wait_for(answer["done"], TIMEOUT)
        if "reset" in answer:
            return {"reset": answer["reset"]}
        fields = fields_of(answer["headers"])
        return {
            "status": int(fields.pop(":status", "0")),
            "headers": fields,
            "interim": answer["interim"],
            "body": answer["body"].decode(errors="replace"),
        }


def fields_of(headers):
    """A HEADERS block as a dict of its first value of each name, decoded."""
    fields = {}
    for name, value in headers:
        fields.setdefault(name.decode(), value.decode())
    return fields


async def main(address, port, server_name, ca_file, requests):
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=server_name)
    config.load_verify_locations(ca_file)
    connecting = connect(address, port, configuration=config, create_protocol=Client, wait_connected=True)
    async with asyncio.timeout(TIMEOUT):
        client = await connecting.__aenter__()
    try:
        for request in requests:
            try:
                print(json.dumps(await client.ask(server_name, request)), flush=True)
            except asyncio.TimeoutError:
                print(json.dumps({"timeout": True}), flush=True)
    finally:
        await connecting.__aexit__(None, None, None)


if __name__ == "__main__":
    address, port, server_name, ca_file = sys.argv[1:5]
    asyncio.run(main(address, int(port), server_name, ca_file, [json.loads(r) for r in sys.argv[5:]]))
