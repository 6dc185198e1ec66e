"""A small real CPO for tests: an HTTP server on 127.0.0.1 that takes OCPI SetChargingProfile
commands (``PUT /{session_id}``) and answers the way a CPO does.

- Every PUT is recorded (:attr:`CpoServer.puts`: time, path, headers, JSON body).
- The first ``fail_first`` PUTs are answered ``503``.
- Every other PUT is answered ``200`` with the OCPI envelope ``{status_code: 1000, data:
  {result: ACCEPTED, timeout: 30}}``; then, from another thread, the asynchronous result
  ``{result: <result>}`` is POSTed to the command's ``response_url`` with ``Authorization: Token
  <result_token>`` (:attr:`CpoServer.results` records the answers).
- :meth:`stop` closes the socket (connection refused: the CPO is down); :meth:`start` opens it
  again on the same port.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Put:
    at: float  # time.monotonic() [s]
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class CpoServer:
    """See the module doc. Use as a context manager or with :meth:`start` / :meth:`stop`."""

    result_token: str | None = None
    fail_first: int = 0
    result: str = "ACCEPTED"
    result_delay_s: float = 0.0
    port: int = field(default_factory=free_port)
    puts: list[Put] = field(default_factory=list)
    results: list[tuple[str, int | str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._posters: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ocpi/cpo/2.2.1/chargingprofiles"

    def start(self) -> CpoServer:
        cpo = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_PUT(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                with cpo._lock:
                    cpo.puts.append(Put(time.monotonic(), self.path, dict(self.headers), body))
                    failing = cpo.fail_first > 0
                    if failing:
                        cpo.fail_first -= 1
                if failing:
                    self._answer(503, {"status_code": 3000, "status_message": "unavailable"})
                    return
                self._answer(
                    200, {"status_code": 1000, "data": {"result": "ACCEPTED", "timeout": 30}}
                )
                if isinstance(body, dict) and "response_url" in body:
                    cpo._post_result_later(str(body["response_url"]))

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def _post_result_later(self, response_url: str) -> None:
        def post() -> None:
            time.sleep(self.result_delay_s)
            headers = {"Authorization": f"Token {self.result_token}"} if self.result_token else {}
            try:
                r = httpx.post(
                    response_url, json={"result": self.result}, headers=headers, timeout=10
                )
                outcome: int | str = r.status_code
            except httpx.HTTPError as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.results.append((response_url, outcome))

        t = threading.Thread(target=post, daemon=True)
        self._posters.append(t)
        t.start()

    def stop(self) -> None:
        """Close the socket: connections are refused until :meth:`start`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        for t in self._posters:
            t.join(15)
        self._posters.clear()

    def __enter__(self) -> CpoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
