"""Between the engine's increments and HTTP: a request's increments as one stream, several requests'
interleaved (``n`` > 1), a whole response drained while watching for the client to go away, and
server-sent events. Closing any of these closes the engine streams beneath, which aborts their requests
(their slots and pages are freed at the next step). No request translation here (``app.py`` does that).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from intern_jax.serve.engine import Increment


class ClientGone(Exception):
    pass


async def merged(runs) -> AsyncIterator[tuple[int, Increment]]:
    """``(choice index, increment)`` from several opened requests as they come; closing this closes them all
    (which aborts those still running)."""
    if len(runs) == 1:
        async for inc in chain(*runs[0]):
            yield 0, inc
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i, first, rest):
        try:
            async for inc in chain(first, rest):
                await queue.put((i, inc))
        except Exception as e:  # noqa: BLE001 - handed to the reader, which raises it
            await queue.put((i, e))

    tasks = [asyncio.ensure_future(pump(i, *run)) for i, run in enumerate(runs)]
    left = len(runs)
    try:
        while left:
            i, inc = await queue.get()
            if isinstance(inc, Exception):
                raise inc
            left -= inc.finished
            yield i, inc
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def chain(first: Increment, rest: AsyncIterator[Increment]) -> AsyncIterator[Increment]:
    try:
        yield first
        if not first.finished:
            async for inc in rest:
                yield inc
    finally:
        await rest.aclose()


async def drain(request: Request, first: Increment, rest: AsyncIterator[Increment]) -> list[Increment] | None:
    """All of a request's increments, or None if the client disconnected first (the request is aborted)."""
    incs = [first]
    if first.finished:
        await rest.aclose()
        return incs

    async def consume():
        async for inc in rest:
            incs.append(inc)

    task = asyncio.ensure_future(consume())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if not task.done() and await request.is_disconnected():
                raise ClientGone
        task.result()
        return incs
    except ClientGone:
        return None
    finally:
        if not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        await rest.aclose()


def sse(events: AsyncIterator[dict]) -> StreamingResponse:
    async def lines():
        async for event in events:
            yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
