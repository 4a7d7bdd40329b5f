"""An app connected to a Plexus event node over its WebSocket (``/ws/events``).

    app = await plexus_events.connect("ws://127.0.0.1:8090/ws/events", app="orders")

    @app.route("orders.create", workers=10)
    async def create(event):
        return {"created": event.body}

    reply = await app.request("inventory.check", {"sku": "x"}, timeout=5)
    await app.wait_closed()

Handlers are async functions taking an :class:`Event`. Their return value is the reply body; an
:class:`Event` returned is the whole reply (status, headers, body); raising :class:`EventError`
answers with its status; any other exception answers 500 with the message and stack.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import traceback
from typing import Any, Awaitable, Callable, Dict, Optional, Union

import msgpack
import websockets

from .envelope import DecodeError, Event, Reassembler, split

log = logging.getLogger("plexus_events")

Handler = Callable[[Event], Awaitable[Any]]
FRAME_OVERHEAD = 1024


class EventError(Exception):
    """A refusal or a failure with an HTTP-style status."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class App:
    """One connection to an event node. Create it with :func:`connect`."""

    def __init__(self, ws, name: str, welcome: Dict[str, Any]):
        self._ws = ws
        self.name = name
        self.origin: str = welcome["origin"]
        self.node_app: str = welcome["app"]
        self.max_frame_bytes: int = welcome["max_frame_bytes"]
        self.max_event_bytes: int = welcome["max_event_bytes"]
        self.max_in_flight: int = welcome["max_in_flight"]
        self._refs = itertools.count(1)
        self._waiting: Dict[Any, asyncio.Future] = {}
        self._handlers: Dict[str, Handler] = {}
        self._reassembly = Reassembler(self.max_event_bytes)
        self._send_lock = asyncio.Lock()
        self._tasks: set = set()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    # -- registration -------------------------------------------------------------------------
    async def register(self, route: str, handler: Handler, workers: int = 10,
                       private: bool = False) -> None:
        """Serves ``route`` with ``handler`` (at most ``workers`` events at once)."""
        self._handlers[route] = handler
        try:
            await self._command({"type": "register", "route": route, "workers": workers,
                                 "private": private})
        except BaseException:
            self._handlers.pop(route, None)
            raise

    def route(self, route: str, workers: int = 10, private: bool = False):
        """Decorator form of :meth:`register`; the registration runs as a task."""
        def decorate(handler: Handler) -> Handler:
            self._spawn(self.register(route, handler, workers, private))
            return handler
        return decorate

    async def unregister(self, route: str) -> None:
        """Stops serving ``route``."""
        await self._command({"type": "unregister", "route": route})
        self._handlers.pop(route, None)

    # -- calls ----------------------------------------------------------------------------------
    async def request(self, to: Union[str, Event], body: Any = None, *,
                      headers: Optional[Dict[str, str]] = None, timeout: float = 10.0) -> Event:
        """Sends an event and waits for the reply. Failures come back as error events
        (404 unknown route, 408 timeout, 500, 503) rather than exceptions."""
        event = _event(to, body, headers)
        reply = await self._command({"type": "request", "timeout_ms": max(1, int(timeout * 1000))},
                                    event)
        return reply

    async def send(self, to: Union[str, Event], body: Any = None, *,
                   headers: Optional[Dict[str, str]] = None) -> None:
        """Sends an event without waiting for a reply (raises EventError when refused)."""
        await self._command({"type": "send"}, _event(to, body, headers))

    async def broadcast(self, to: Union[str, Event], body: Any = None, *,
                        headers: Optional[Dict[str, str]] = None) -> None:
        """Sends an event to every instance serving its route."""
        await self._command({"type": "broadcast"}, _event(to, body, headers))

    # -- lifecycle ------------------------------------------------------------------------------
    async def close(self) -> None:
        """Closes the connection (the node releases this app's routes)."""
        await self._ws.close()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Waits until the connection ends."""
        await asyncio.shield(self._reader)

    # -- internals ------------------------------------------------------------------------------
    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, frame: Dict[str, Any], event: Optional[bytes] = None) -> None:
        parts = [None] if event is None else split(event, self.max_frame_bytes - FRAME_OVERHEAD)
        async with self._send_lock:
            for part in parts:
                if part is not None:
                    frame = dict(frame, event=part)
                await self._ws.send(msgpack.packb(frame, use_bin_type=True))

    async def _command(self, frame: Dict[str, Any], event: Optional[Event] = None):
        ref = next(self._refs)
        future = asyncio.get_running_loop().create_future()
        self._waiting[ref] = future
        try:
            await self._write(dict(frame, ref=ref), None if event is None else event.to_bytes())
            return await future
        finally:
            self._waiting.pop(ref, None)

    def _whole(self, data: bytes) -> Optional[Event]:
        event = Event.from_bytes(data)
        if not Reassembler.is_segment(event):
            return event
        whole = self._reassembly.add(event)
        return None if whole is None else Event.from_bytes(whole)

    async def _read(self) -> None:
        try:
            async for message in self._ws:
                if isinstance(message, str):
                    continue
                frame = msgpack.unpackb(message, raw=False, strict_map_key=False)
                kind = frame.get("type")
                if kind == "deliver":
                    event = self._whole(frame["event"])
                    if event is not None:
                        self._spawn(self._handle(frame["id"], frame["route"], event))
                    continue
                future = self._waiting.get(frame.get("ref"))
                if kind == "error":
                    error = EventError(frame.get("status", 500), frame.get("message", ""))
                    if future is not None and not future.done():
                        future.set_exception(error)
                    else:
                        log.warning("node refused a frame: %s", error)
                elif future is not None and not future.done():
                    if kind == "ack":
                        future.set_result(None)
                    elif kind == "reply":
                        reply = self._whole(frame["event"])
                        if reply is not None:
                            future.set_result(reply)
        except websockets.ConnectionClosed:
            pass
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(EventError(503, "connection to the event node closed"))

    async def _handle(self, delivery: str, route: str, event: Event) -> None:
        handler = self._handlers.get(route)
        try:
            if handler is None:
                raise EventError(404, f"route {route} is not served by this app")
            outcome = await handler(event)
            reply = outcome if isinstance(outcome, Event) else Event(body=outcome)
        except EventError as error:
            reply = Event(status=error.status, body=error.message)
        except Exception as error:  # the handler failed: answer 500 with the reason
            reply = Event(status=500, body=f"{type(error).__name__}: {error}",
                          stack=traceback.format_exc())
        try:
            await self._write({"type": "result", "id": delivery}, reply.to_bytes())
        except websockets.ConnectionClosed:
            pass


def _event(to: Union[str, Event], body: Any, headers: Optional[Dict[str, str]]) -> Event:
    if isinstance(to, Event):
        return to
    return Event(to=to, body=body, headers=dict(headers or {}))


async def connect(url: str, app: str, token: Optional[str] = None) -> App:
    """Connects to an event node (``ws://host:port/ws/events``) as ``app``."""
    ws = await websockets.connect(url, max_size=None)
    hello = {"type": "hello", "protocol": 1, "app": app}
    if token is not None:
        hello["token"] = token
    await ws.send(msgpack.packb(hello, use_bin_type=True))
    frame = msgpack.unpackb(await ws.recv(), raw=False, strict_map_key=False)
    if frame.get("type") != "welcome":
        await ws.close()
        raise EventError(frame.get("status", 500), frame.get("message", "refused by the node"))
    return App(ws, app, frame)


__all__ = ["App", "EventError", "connect", "DecodeError"]
