"""Event over HTTP: the fallback when a WebSocket is not an option (``POST /api/event``)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any, Dict, Optional

from .envelope import Event


def _post(url: str, data: bytes, headers: Dict[str, str], timeout: float):
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


async def post_event(url: str, event: Event, *, timeout: float = 10.0, asynchronous: bool = False,
                     as_json: bool = False, token: Optional[str] = None) -> Event:
    """Posts ``event`` to ``url`` (``http://node/api/event``) and returns the reply event.

    With ``as_json`` the envelope travels as JSON, otherwise as MsgPack; the reply comes in the
    same form. The event's trace id is carried as a W3C ``traceparent`` header."""
    headers = {"X-Timeout": str(max(1, int(timeout * 1000)))}
    if asynchronous:
        headers["X-Async"] = "true"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if event.trace_id and len(event.trace_id) == 32:
        span = (event.span_id or "0" * 15 + "1")[-16:].rjust(16, "0")
        headers["traceparent"] = f"00-{event.trace_id}-{span}-01"
    if as_json:
        headers["Content-Type"] = "application/json"
        data = json.dumps(_json_map(event)).encode()
    else:
        headers["Content-Type"] = "application/msgpack"
        data = event.to_bytes()
    status, _, body = await asyncio.to_thread(_post, url, data, headers, timeout + 5)
    if as_json:
        reply, _ = Event.from_map(json.loads(body))
    else:
        reply = Event.from_bytes(body)
    if reply.status == 200 and status != 200:
        reply.status = status
    return reply


def _json_map(event: Event) -> Dict[str, Any]:
    out = event.to_map()
    if isinstance(out.get("exception"), bytes):
        import base64
        out["exception"] = base64.b64encode(out["exception"]).decode()
    return out
