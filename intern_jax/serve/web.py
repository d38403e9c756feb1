"""The web chat page at ``/``: one HTML page, its script and its style, shipped in the package (no CDN).

The page streams from the server's own ``/v1/chat/completions`` and sends the API key typed into it;
the page and its assets need no key. Markdown is rendered in the browser by ``static/markdown.js``, a
small renderer that escapes HTML before it adds any markup, and a Content-Security-Policy lets the
page run only its own files. This module serves files and holds no chat logic.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                       "base-uri 'none'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@cache
def _assets() -> dict[str, tuple[bytes, str]]:
    """name -> (content, media type) of every file in ``static/``: the only names ever served."""
    static = resources.files("intern_jax.serve") / "static"
    out = {}
    for entry in static.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _MEDIA_TYPES:
            out[entry.name] = (entry.read_bytes(), _MEDIA_TYPES[suffix])
    return out


def _serve(name: str) -> Response:
    asset = _assets().get(name)
    if asset is None:
        raise HTTPException(404, f"no such file: /static/{name}")
    content, media_type = asset
    return Response(content, media_type=media_type, headers=_HEADERS)


@router.get("/")
async def chat_page() -> Response:
    return _serve("index.html")


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    return _serve(name)
