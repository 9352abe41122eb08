#!/usr/bin/env python3
"""A small OTLP/HTTP receiver for the trace tests: takes POST /v1/traces with a JSON body
(ExportTraceServiceRequest), answers 200 {}, and appends each body as one line to OUT.

    otlp_receiver.py OUT

Prints "listening 127.0.0.1:PORT" (an ephemeral port) and serves until SIGTERM.  Not a
collector: only what the tests check (the spans as sent)."""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OUT = sys.argv[1]
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        try:
            doc = json.loads(body)
            ok = self.path == "/v1/traces" and \
                self.headers.get("Content-Type", "").startswith("application/json")
        except ValueError:
            ok = False
        if ok:
            with lock, open(OUT, "a") as f:
                f.write(json.dumps(doc, separators=(",", ":")) + "\n")
        answer = b"{}" if ok else b'{"error":"bad request"}'
        self.send_response(200 if ok else 400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
srv.daemon_threads = True
print("listening 127.0.0.1:%d" % srv.server_address[1], flush=True)
try:
    srv.serve_forever()
except KeyboardInterrupt:
    pass
