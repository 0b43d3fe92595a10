"""A minimal trace collector for the tests, the demo and bench/: Zipkin v2 JSON and OTLP/HTTP (protobuf) receivers.

Why not a real collector: Zipkin and Jaeger are Java and Go programs not packaged in Debian, and PyPI has
no maintained Zipkin or OTLP *receiver* (``py-zipkin`` and the OpenTelemetry SDK are clients). What Envoy
sends is decoded exactly as a collector would: ``POST /api/v2/spans`` takes Zipkin's v2 JSON list of spans
(what ``envoy.tracers.zipkin`` sends with ``HTTP_JSON``), ``POST /v1/traces`` takes an OTLP
``ExportTraceServiceRequest`` in protobuf (what ``envoy.tracers.opentelemetry`` sends over HTTP), decoded
with the OTLP protos that ship in xds-protos. Anything else is answered 404 and counted as an error.

Every span received is appended to ``--out`` as one JSON line in a common shape:
``{"format", "trace_id", "id", "parent_id", "kind", "service", "name", "tags"}`` (ids in lower-case
hex, ``parent_id`` "" for a root span, ``kind`` ``CLIENT``/``SERVER``/...). Run it as
``python -m vmagent.lab.tracecollector --port 9411 --port 4318 --out FILE``; it prints ``listening`` once
every port is bound.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_lock = threading.Lock()


def zipkin_spans(body: bytes) -> list[dict[str, Any]]:
    """Zipkin v2 JSON (a list of spans) in the common shape."""
    out = []
    for s in json.loads(body):
        out.append(
            {
                "format": "zipkin",
                "trace_id": str(s["traceId"]).lower(),
                "id": str(s["id"]).lower(),
                "parent_id": str(s.get("parentId", "")).lower(),
                "kind": str(s.get("kind", "")),
                "service": str((s.get("localEndpoint") or {}).get("serviceName", "")),
                "name": str(s.get("name", "")),
                "tags": {str(k): str(v) for k, v in (s.get("tags") or {}).items()},
            }
        )
    return out


def otlp_spans(body: bytes) -> list[dict[str, Any]]:
    """An OTLP ExportTraceServiceRequest (protobuf) in the common shape."""
    # the OTLP protos ship in xds-protos, without type stubs
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2  # type: ignore[import-untyped]
    from opentelemetry.proto.trace.v1 import trace_pb2  # type: ignore[import-untyped]

    req = trace_service_pb2.ExportTraceServiceRequest()
    req.ParseFromString(body)
    out = []
    for rs in req.resource_spans:
        attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
        # xds-protos ships an OTLP release that still calls field 2 instrumentation_library_spans (later
        # renamed scope_spans, same number and shape)
        groups = rs.scope_spans if hasattr(rs, "scope_spans") else rs.instrumentation_library_spans
        for ss in groups:
            for span in ss.spans:
                kind = trace_pb2.Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_")
                out.append(
                    {
                        "format": "otlp",
                        "trace_id": span.trace_id.hex(),
                        "id": span.span_id.hex(),
                        "parent_id": span.parent_span_id.hex(),
                        "kind": kind,
                        "service": attrs.get("service.name", ""),
                        "name": span.name,
                        "tags": {a.key: a.value.string_value for a in span.attributes},
                    }
                )
    return out


def make_handler(out: Path) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self._body()
            try:
                if self.path.startswith("/api/v2/spans"):
                    spans, code, reply = zipkin_spans(body), 202, b""
                elif self.path.startswith("/v1/traces"):
                    spans, code, reply = otlp_spans(body), 200, b""
                else:
                    spans, code, reply = [], 404, b"unknown path"
            except Exception as exc:  # a malformed body: say so to the sender and in the output
                spans, code, reply = [{"error": f"{self.path}: {exc}"}], 400, str(exc).encode()
            with _lock, out.open("a") as f:
                for s in spans:
                    f.write(json.dumps(s, sort_keys=True) + "\n")
            self.send_response(code)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def _body(self) -> bytes:
            """The request body, with a Content-Length or chunked (Envoy's async client streams it)."""
            if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after the chunk

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


def read_spans(path: Path) -> list[dict[str, Any]]:
    """Every span written so far (an unfinished last line is left for the next read)."""
    if not path.exists():
        return []
    spans = []
    for line in path.read_text().splitlines():
        try:
            spans.append(json.loads(line))
        except ValueError:
            continue
    return spans


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, action="append", required=True)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    servers = [ThreadingHTTPServer((args.host, port), make_handler(args.out)) for port in args.port]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("listening", flush=True)
    try:
        servers[0].serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
