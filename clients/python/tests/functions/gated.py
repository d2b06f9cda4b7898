"""A test function (stdlib only) whose map inputs can wait on a gate the test opens, so a test
knows which results exist when it cuts a connection; and a stream without event ids.

    POST /        one map input {"value": v, "gate": "<path>"}: waits until the file <path>
                  exists (when given), then answers {"value": v}
    GET /ticks    `data: tick <i>` every `pause` seconds (query), no ids, until the client leaves;
                  with `n` and `abort=1`: n ticks, then the connection drops mid-body
"""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        item = json.loads(body)
        gate = item.get("gate")
        opened = threading.Event()
        while gate and not os.path.exists(gate):
            opened.wait(0.02)  # the gate is a file the test creates
        answer = json.dumps({"value": item.get("value")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_GET(self) -> None:
        query = parse_qs(urlparse(self.path).query)
        pause = float(query.get("pause", ["0.05"])[0])
        ticks = int(query.get("n", ["-1"])[0])
        abort = query.get("abort") == ["1"]
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        if abort:
            # Chunked, and closed before the last chunk: the function breaks off mid-stream.
            self.send_header("transfer-encoding", "chunked")
        self.send_header("connection", "close")
        self.end_headers()
        between = threading.Event()
        tick = 0
        try:
            while tick != ticks:
                event = f"data: tick {tick}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event) if abort else event)
                self.wfile.flush()
                tick += 1
                between.wait(pause)
        except OSError:
            pass  # the client left
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "9000"))), Handler).serve_forever()
