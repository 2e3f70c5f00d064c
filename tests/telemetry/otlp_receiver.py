"""A small OTLP/HTTP and OTLP/gRPC receiver for the end-to-end tests.

    python otlp_receiver.py --port-file PATH --out PATH [--grpc-port-file PATH]
    python otlp_receiver.py --self-test

Listens on 127.0.0.1 (a port the OS chooses, written to --port-file once
listening). `POST /v1/traces` (protobuf, optionally gzip) appends one JSON
line per span to --out; `/v1/metrics` and `/v1/logs` are accepted and
dropped. `GET /echo-headers` answers the request's headers as JSON, a target
for egress tests. Every request's path and headers go to `<out>.requests`.
With --grpc-port-file, the gRPC TraceService/Export (on another port,
written there before --port-file) does the same, its metadata as headers
and its path `grpc:TraceService/Export`.
It exits when stdin reaches EOF, so it never outlives the test that runs it.
"""

import argparse
import gzip
import http.client
import json
import os
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

PROTOBUF = "application/x-protobuf"
# Accepted without decoding: their (empty) answers.
IGNORED = {
    "/v1/metrics": ExportMetricsServiceResponse(),
    "/v1/logs": ExportLogsServiceResponse(),
}


def any_value(v):
    """An OTLP AnyValue as the Python value it holds."""
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attributes(v.kvlist_value.values)
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


def attributes(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def span_lines(request):
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield json.dumps({
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": s.kind,
                    "start_ns": s.start_time_unix_nano,
                    "end_ns": s.end_time_unix_nano,
                    "status_code": s.status.code,
                    "status_message": s.status.message,
                    "attributes": attributes(s.attributes),
                    "resource": resource,
                    "scope": ss.scope.name,
                }) + "\n"


class Handler(BaseHTTPRequestHandler):
    # Keep-alive, as exporters' connection pools expect of a collector.
    protocol_version = "HTTP/1.1"

    def log_request(self, code="-", size="-"):
        pass  # the .requests file has them; stderr is kept for errors

    def headers_dict(self):
        # Repeated headers joined, so a duplicated traceparent shows.
        out = {}
        for k, v in self.headers.items():
            k = k.lower()
            out[k] = f"{out[k]}, {v}" if k in out else v
        return out

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return body
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def reply(self, status, body=b"", content_type=PROTOBUF):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_to(self, path, text):
        with self.server.lock, open(path, "a") as f:
            f.write(text)

    def handle_any(self):
        # Read the whole body first: leftovers would corrupt a kept-alive connection.
        body = self.read_body()
        out = self.server.out
        self.log_to(out + ".requests", json.dumps({"path": self.path, "headers": self.headers_dict()}) + "\n")
        if self.command == "GET" and self.path == "/echo-headers":
            return self.reply(200, json.dumps(self.headers_dict()).encode(), "application/json")
        if self.command == "POST" and self.path in IGNORED:
            return self.reply(200, IGNORED[self.path].SerializeToString())
        if self.command != "POST" or self.path != "/v1/traces":
            return self.reply(404, b"not found", "text/plain")
        if self.headers.get("Content-Type", "").split(";")[0].strip().lower() != PROTOBUF:
            return self.reply(415, b"only application/x-protobuf", "text/plain")
        try:
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest.FromString(body)
        except (OSError, EOFError, DecodeError) as e:
            print(f"otlp_receiver: bad /v1/traces body: {e!r}", file=sys.stderr, flush=True)
            return self.reply(400, str(e).encode(), "text/plain")
        self.log_to(out, "".join(span_lines(request)))
        self.reply(200, ExportTraceServiceResponse().SerializeToString())

    do_GET = do_POST = do_PUT = do_DELETE = handle_any


GRPC_PATH = "grpc:TraceService/Export"


def make_grpc_server(out, lock):
    """The gRPC trace service on a free port of 127.0.0.1; returns (server, port)."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            headers = {k.lower(): v for k, v in context.invocation_metadata()}
            with lock:
                with open(out + ".requests", "a") as f:
                    f.write(json.dumps({"path": GRPC_PATH, "headers": headers}) + "\n")
                with open(out, "a") as f:
                    f.write("".join(span_lines(request)))
            return ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def make_server(out):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.out = out
    server.lock = threading.Lock()
    return server


def self_test():
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

    def check(cond, what):
        if not cond:
            raise SystemExit(f"self-test failed: {what}")

    def kv(key, **value):
        return KeyValue(key=key, value=AnyValue(**value))

    def post(path, body, **headers):
        req = urllib.request.Request(base + path, data=body, headers={"Content-Type": PROTOBUF, **headers})
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def lines(path):
        with open(path) as f:
            return [json.loads(line) for line in f]

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "spans.jsonl")
        server = make_server(out)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"

        trace_id, parent_id, child_id = bytes(range(16)), bytes(range(8)), bytes(range(8, 16))
        parent = Span(trace_id=trace_id, span_id=parent_id, name="parent", kind=Span.SPAN_KIND_SERVER,
                      start_time_unix_nano=1000, end_time_unix_nano=5000,
                      status=Status(code=Status.STATUS_CODE_OK))
        child = Span(trace_id=trace_id, span_id=child_id, parent_span_id=parent_id, name="child",
                     kind=Span.SPAN_KIND_INTERNAL, start_time_unix_nano=2000, end_time_unix_nano=3000,
                     status=Status(code=Status.STATUS_CODE_ERROR, message="boom"),
                     attributes=[kv("s", string_value="x"), kv("i", int_value=7), kv("f", double_value=1.5),
                                 kv("b", bool_value=True),
                                 kv("a", array_value=ArrayValue(values=[AnyValue(int_value=1), AnyValue(int_value=2)]))])
        request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
            resource={"attributes": [kv("service.name", string_value="self-test")]},
            scope_spans=[ScopeSpans(scope={"name": "self-test-scope"}, spans=[parent, child])],
        )])
        body = request.SerializeToString()

        status, answer = post("/v1/traces", body)
        check(status == 200, f"plain POST: {status}")
        ExportTraceServiceResponse.FromString(answer)
        status, _ = post("/v1/traces", gzip.compress(body), **{"Content-Encoding": "gzip"})
        check(status == 200, f"gzip POST: {status}")

        spans = lines(out)
        check(len(spans) == 4, f"4 spans, got {spans}")
        expected_child = {
            "trace_id": "000102030405060708090a0b0c0d0e0f", "span_id": "08090a0b0c0d0e0f",
            "parent_span_id": "0001020304050607", "name": "child", "kind": 1, "start_ns": 2000,
            "end_ns": 3000, "status_code": 2, "status_message": "boom",
            "attributes": {"s": "x", "i": 7, "f": 1.5, "b": True, "a": [1, 2]},
            "resource": {"service.name": "self-test"}, "scope": "self-test-scope",
        }
        check(spans[1] == expected_child and spans[3] == expected_child, f"child span: {spans[1]}")
        check(spans[0]["parent_span_id"] == "" and spans[0]["kind"] == 2, f"parent span: {spans[0]}")

        status, _ = post("/v1/traces", b"not a protobuf")
        check(status == 400, f"garbage: {status}")
        status, _ = post("/v1/traces", b"not gzip", **{"Content-Encoding": "gzip"})
        check(status == 400, f"bad gzip: {status}")
        for path in IGNORED:
            check(post(path, b"") == (200, b""), f"{path} not accepted")
        check(post("/v1/other", b"")[0] == 404, "unknown path not 404")

        # A chunked body, as a streaming exporter would send it.
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1])
        conn.request("POST", "/v1/traces", body=iter([body[:10], body[10:]]), headers={"Content-Type": PROTOBUF},
                     encode_chunked=True)
        check(conn.getresponse().status == 200, "chunked POST")
        conn.close()
        check(len(lines(out)) == 6, "chunked spans not written")

        with urllib.request.urlopen(urllib.request.Request(base + "/echo-headers", headers={"X-Probe": "42"})) as r:
            check(json.load(r).get("x-probe") == "42", "echo-headers")
        logged = lines(out + ".requests")
        check(logged[-1]["path"] == "/echo-headers" and logged[-1]["headers"]["x-probe"] == "42",
              f"requests log: {logged[-1]}")

        # The same request over gRPC, with metadata.
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        grpc_server, grpc_port = make_grpc_server(out, server.lock)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            stub.Export(request, metadata=[("x-api-key", "k1")], timeout=10)
        check(lines(out)[-1] == expected_child, "gRPC spans not written")
        logged = lines(out + ".requests")
        check(logged[-1]["path"] == GRPC_PATH and logged[-1]["headers"]["x-api-key"] == "k1",
              f"gRPC request log: {logged[-1]}")
        grpc_server.stop(0)

        server.shutdown()
        server.server_close()
    print("ok")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port-file")
    parser.add_argument("--out")
    parser.add_argument("--grpc-port-file")
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    if args.self_test:
        return self_test()
    if not (args.port_file and args.out):
        parser.error("--port-file and --out are required")

    server = make_server(os.path.abspath(args.out))

    def publish(path, port):
        # Renamed into place: a reader never sees a partial number.
        with open(path + ".tmp", "w") as f:
            f.write(str(port))
        os.replace(path + ".tmp", path)

    grpc_server = None
    if args.grpc_port_file:
        grpc_server, grpc_port = make_grpc_server(os.path.abspath(args.out), server.lock)
        publish(args.grpc_port_file, grpc_port)
    publish(args.port_file, server.server_address[1])

    def watch_stdin():
        # EOF: the parent closed its end or died.
        while sys.stdin.buffer.read(65536):
            pass
        server.shutdown()

    threading.Thread(target=watch_stdin, daemon=True).start()
    server.serve_forever()
    server.server_close()
    if grpc_server is not None:
        grpc_server.stop(0)


if __name__ == "__main__":
    main()
