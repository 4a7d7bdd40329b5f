"""Plexus event mesh client for Python (asyncio): connect to an event node, register async
functions under route names, and send, request and broadcast events to any route in the mesh."""

from .app import App, EventError, connect
from .envelope import DecodeError, Event
from .http import post_event

__all__ = ["App", "DecodeError", "Event", "EventError", "connect", "post_event"]
