"""A small real HTTP ingest server for the agent's tests, switchable between answers."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from afmon.collectors import wire

REJECT_DETAIL = {"field": "$.series[0].unit", "message": "metric user_cpu_seconds is in 'seconds'"}


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class IngestServer:
    """Answers POST /api/v1/ingest with `mode`: ok, 401, 422, 503; `stop()` takes it down."""

    port: int
    mode: str = "ok"
    requests: list[Request] = field(default_factory=list)
    batches: list[wire.Batch] = field(default_factory=list)  # applied, in arrival order
    _httpd: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def seqs(self) -> list[int]:
        return [b.seq for b in self.batches]

    def start(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests.append(Request(self.path, dict(self.headers), body))
                if server.mode == "401":
                    return self._reply(401, {"detail": "unknown agent token"})
                if server.mode == "422":
                    return self._reply(422, {"detail": REJECT_DETAIL})
                if server.mode == "503":
                    return self._reply(503, {"detail": "store unavailable"})
                batch = wire.decode(body)
                seen = {(b.agent_id, b.seq) for b in server.batches}
                if (batch.agent_id, batch.seq) in seen:
                    return self._reply(200, {"status": "duplicate", "seq": batch.seq})
                server.batches.append(batch)
                return self._reply(200, {"status": "applied", "seq": batch.seq})

            def _reply(self, code: int, payload: dict[str, object]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._httpd = self._thread = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
