"""A stand-in OpenAI-compatible endpoint on loopback for the agent tests: canned replies, every request kept."""

from __future__ import annotations

import http.server
import json
import threading
from types import SimpleNamespace

import pytest

from intern_jax.testing import JSONHandler


class CannedEndpoint(JSONHandler):
    """Lists one model (``tiny``) and answers each chat request with the next canned reply: a string is the
    message's content, a dict the message's fields (``content``, ``tool_calls``). Every request body is kept
    (with its ``Authorization`` header as ``auth``); with no reply left the answer is HTTP 400."""

    def do_GET(self):
        self.send_json(200, {"data": [{"id": "tiny", "object": "model"}]})

    def do_POST(self):
        state = self.server.state
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        state.bodies.append({**body, "auth": self.headers.get("Authorization")})
        if not state.replies:
            return self.send_json(400, {"error": {"message": "no more replies", "param": "messages"}})
        reply = state.replies.pop(0)
        message = {"content": reply} if isinstance(reply, str) else reply
        self.send_json(200, {"choices": [{"message": {"role": "assistant", **message}}]})


@pytest.fixture
def endpoint():
    """``endpoint.url`` (``http://127.0.0.1:PORT/v1``), ``endpoint.replies`` (fill it before the requests) and
    ``endpoint.bodies`` (the requests received); ``endpoint.close()`` stops it early (it stops after the test)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CannedEndpoint)
    server.state = SimpleNamespace(replies=[], bodies=[])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    closed = []

    def close():
        if not closed:
            closed.append(True)
            server.shutdown()
            server.server_close()

    yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_address[1]}/v1", replies=server.state.replies,
                          bodies=server.state.bodies, close=close)
    close()
