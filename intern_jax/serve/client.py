"""A streamed multi-turn chat with any OpenAI-compatible server (ours from ``scripts/serve.py``, or another).

``RemoteChatSession`` is the HTTP twin of ``inference.ChatSession``: ``send(text)`` yields the reply's
pieces as ``/chat/completions`` streams them (server-sent events) and keeps the conversation, which is
sent whole each turn (the server's prefix cache, not the client, saves the recomputation). Plain
``http.client``: no client library needed. A failed request raises ``ConnectionError`` with the URL and the
server's message; closing a reply early closes the connection, which ends the request on the server.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from collections.abc import Iterator


class RemoteChatSession:
    def __init__(self, base_url: str, sampling, *, system: str | None = None, model: str | None = None,
                 api_key: str | None = None, timeout: float = 600.0):
        url = urllib.parse.urlsplit(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"--url must look like http://HOST:PORT/v1, got {base_url!r}")
        self.url, self.base_path = url, url.path
        self.sampling, self.system, self.api_key, self.timeout = sampling, system, api_key, timeout
        self.messages: list[dict] = []
        self.last_usage: dict | None = None
        self.last_tokens_per_s: float | None = None
        self.model = model or self._json("GET", "/models")["data"][0]["id"]

    def reset(self) -> None:
        self.messages = []

    # -- HTTP ----------------------------------------------------------------------------------

    def _connect(self, method: str, path: str, body: dict | None):
        cls = http.client.HTTPSConnection if self.url.scheme == "https" else http.client.HTTPConnection
        conn = cls(self.url.hostname, self.url.port, timeout=self.timeout)
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        where = f"{method} {self.url.scheme}://{self.url.netloc}{self.base_path}{path}"
        try:
            conn.request(method, self.base_path + path, body=None if body is None else json.dumps(body),
                         headers=headers)
            response = conn.getresponse()
        except OSError as e:
            conn.close()
            raise ConnectionError(f"{where} failed: {e}; is the server running?") from None
        if response.status != 200:
            detail = response.read().decode("utf-8", "replace")
            conn.close()
            try:
                detail = json.loads(detail)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                detail = detail[:300]
            raise ConnectionError(f"{where} failed with HTTP {response.status}: {detail}")
        return conn, response

    def _json(self, method: str, path: str, body: dict | None = None) -> dict:
        conn, response = self._connect(method, path, body)
        try:
            return json.loads(response.read())
        finally:
            conn.close()

    def _body(self) -> dict:
        s = self.sampling
        body = {"model": self.model, "stream": True, "stream_options": {"include_usage": True},
                "messages": ([{"role": "system", "content": self.system}] if self.system else []) + self.messages,
                "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_new_tokens}
        if s.top_k:
            body["top_k"] = s.top_k  # not OpenAI's; sent only when asked for
        if s.temperature > 0:
            body["seed"] = s.seed
        return body

    # -- a turn --------------------------------------------------------------------------------

    def send(self, text: str) -> Iterator[str]:
        """Stream the reply to ``text``. The turn joins the conversation only once the reply is complete."""
        self.messages.append({"role": "user", "content": text})
        try:
            conn, response = self._connect("POST", "/chat/completions", self._body())
        except BaseException:
            self.messages.pop()
            raise
        pieces: list[str] = []
        first = None
        self.last_usage = self.last_tokens_per_s = None
        complete = False
        try:
            for event in _events(response):
                if "error" in event:
                    raise ConnectionError(f"the server failed mid-reply: {event['error'].get('message')}")
                if event.get("usage"):
                    self.last_usage = event["usage"]
                for choice in event.get("choices") or ():
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        first = first or time.perf_counter()
                        pieces.append(piece)
                        yield piece
            complete = True
        finally:
            conn.close()  # early: the server sees the client go away and ends the request
            if complete:
                self.messages.append({"role": "assistant", "content": "".join(pieces)})
                tokens = self.last_usage["completion_tokens"] if self.last_usage else len(pieces)
                elapsed = time.perf_counter() - first if first else 0.0
                self.last_tokens_per_s = (tokens - 1) / elapsed if tokens > 1 and elapsed > 0 else None
            else:
                self.messages.pop()


def _events(response) -> Iterator[dict]:
    """The JSON of each ``data:`` line of a server-sent event stream, up to ``data: [DONE]``."""
    while True:
        line = response.readline()
        if not line:
            return
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        yield json.loads(data)
