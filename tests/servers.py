"""Real servers on loopback for tests: an HTTP file server with byte ranges and counters."""

from __future__ import annotations

import functools
import os
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class RangeHandler(SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus single byte ranges, and per-path request/byte counters."""

    server: CountingServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def send_head(self) -> Any:
        path = self.translate_path(self.path)
        rng = self.headers.get("Range")
        if not rng or os.path.isdir(path) or not os.path.exists(path):
            return super().send_head()
        size = os.path.getsize(path)
        try:
            unit, spec = rng.split("=", 1)
            start_s, end_s = spec.split("-", 1)
            if start_s == "":
                start, end = max(0, size - int(end_s)), size - 1
            else:
                start = int(start_s)
                end = min(int(end_s), size - 1) if end_s else size - 1
            assert unit.strip() == "bytes" and start <= end
        except Exception:
            self.send_error(416, "bad range")
            return None
        f = open(path, "rb")  # noqa: SIM115 - closed by copyfile's caller
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._remaining = end - start + 1
        return f

    def copyfile(self, source: Any, outputfile: Any) -> None:
        remaining = getattr(self, "_remaining", None)
        sent = 0
        while True:
            n = 65536 if remaining is None else min(65536, remaining - sent)
            if n <= 0:
                break
            buf = source.read(n)
            if not buf:
                break
            self.server.count(self.path, len(buf))  # before the write: the client never sees uncounted bytes
            outputfile.write(buf)
            sent += len(buf)
        self._remaining = None

    def do_GET(self) -> None:  # noqa: N802
        self.server.count_request(self.path)
        super().do_GET()

    def do_HEAD(self) -> None:  # noqa: N802
        self.server.count_request(self.path)
        super().do_HEAD()


class CountingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, directory: str) -> None:
        super().__init__(("127.0.0.1", 0), functools.partial(RangeHandler, directory=directory))
        self.requests: Counter[str] = Counter()
        self.bytes_sent: Counter[str] = Counter()
        self._lock = threading.Lock()

    def count_request(self, path: str) -> None:
        with self._lock:
            self.requests[path.split("?")[0]] += 1

    def count(self, path: str, n: int) -> None:
        with self._lock:
            self.bytes_sent[path.split("?")[0]] += n

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_sent.clear()


def serve(directory: str) -> CountingServer:
    """Start a CountingServer for `directory` in a daemon thread; call .shutdown() to stop."""
    srv = CountingServer(directory)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv
