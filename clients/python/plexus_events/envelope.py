"""The event envelope and its MsgPack codec (Mercury's standard and compact key forms).

Encoding writes the standard form (descriptive keys, ``headers`` always present); decoding reads
both forms, treats nil as absent and ignores unknown keys. See docs/events.md in the repository.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import msgpack

# (attribute, standard key, compact key)
FIELDS: List[Tuple[str, str, str]] = [
    ("id", "id", "0"),
    ("to", "to", "T"),
    ("from_", "from", "F"),
    ("reply_to", "reply_to", "R"),
    ("trace_id", "trace_id", "t"),
    ("trace_path", "trace_path", "p"),
    ("span_id", "span_id", "s"),
    ("cid", "cid", "X"),
    ("status", "status", "S"),
    ("headers", "headers", "H"),
    ("body", "body", "B"),
    ("tags", "tags", "7"),
    ("annotations", "annotations", "6"),
    ("exception", "exception", "4"),
    ("stack", "stack", "5"),
    ("obj_type", "obj_type", "O"),
    ("exec_time", "exec_time", "1"),
    ("round_trip", "round_trip", "2"),
]
_BY_KEY = {key: attr for attr, long, short in FIELDS for key in (long, short)}
_TEXT = {"id", "to", "from_", "reply_to", "trace_id", "trace_path", "span_id", "cid", "stack",
         "obj_type"}


class DecodeError(ValueError):
    """Bytes that are not an envelope; the message names the field."""


def new_id() -> str:
    """A fresh event id (a UUID without dashes)."""
    return uuid.uuid4().hex


@dataclass
class Event:
    """One event: addressing, tracing, status, headers and a body (any MsgPack value)."""

    to: Optional[str] = None
    body: Any = None
    headers: Dict[str, str] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    from_: Optional[str] = None
    reply_to: Optional[str] = None
    trace_id: Optional[str] = None
    trace_path: Optional[str] = None
    span_id: Optional[str] = None
    cid: Optional[str] = None
    status: int = 200
    tags: Dict[str, str] = field(default_factory=dict)
    annotations: Dict[str, Any] = field(default_factory=dict)
    exception: Optional[bytes] = None
    stack: Optional[str] = None
    obj_type: Optional[str] = None
    exec_time: Optional[float] = None
    round_trip: Optional[float] = None

    @property
    def is_error(self) -> bool:
        """True when the status is 400 or more."""
        return self.status >= 400

    @property
    def error(self) -> Optional[str]:
        """The error message of an error event (its body as text)."""
        if not self.is_error:
            return None
        return self.body if isinstance(self.body, str) else ("" if self.body is None else str(self.body))

    def to_map(self, compact: bool = False) -> Dict[str, Any]:
        """The envelope as a map with standard (or compact) keys."""
        out: Dict[str, Any] = {}
        for attr, long, short in FIELDS:
            value = getattr(self, attr)
            key = short if compact else long
            if attr == "headers":
                if value or not compact:
                    out[key] = dict(value)
            elif attr in ("tags", "annotations"):
                if value:
                    out[key] = dict(value)
            elif attr == "status":
                out[key] = int(value)
            elif value is not None:
                out[key] = value
        return out

    def to_bytes(self, compact: bool = False) -> bytes:
        """Encodes the standard (or compact) form."""
        return msgpack.packb(self.to_map(compact), use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Event":
        """Decodes either form."""
        return cls.decode(data)[0]

    @classmethod
    def decode(cls, data: bytes) -> Tuple["Event", bool]:
        """Decodes either form; returns the event and True when it was in the compact form."""
        try:
            value = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception as error:  # msgpack raises several types
            raise DecodeError(f"not valid MsgPack: {error}") from error
        return cls.from_map(value)

    @classmethod
    def from_map(cls, value: Any) -> Tuple["Event", bool]:
        """Reads a decoded map; returns the event and whether the keys were compact."""
        if not isinstance(value, dict):
            raise DecodeError("an envelope must be a MsgPack map")
        compact = not any(isinstance(k, str) and len(k) > 1 for k in value)
        event = cls(id="")
        for key, item in value.items():
            attr = _BY_KEY.get(key) if isinstance(key, str) else None
            if attr is None or item is None:
                continue
            setattr(event, attr, _field(key, attr, item))
        return event, compact


def _field(key: str, attr: str, item: Any) -> Any:
    def wrong(expected: str) -> DecodeError:
        return DecodeError(f'field "{key}": expected {expected}')

    if attr in _TEXT:
        if not isinstance(item, str):
            raise wrong("a string")
        return item
    if attr == "status":
        try:
            status = int(item) if isinstance(item, (int, str)) and not isinstance(item, bool) else None
        except ValueError:
            status = None
        if status is None or not 100 <= status <= 999:
            raise wrong("an integer status from 100 to 999")
        return status
    if attr in ("headers", "tags"):
        if attr == "tags" and isinstance(item, str):
            pairs = [kv.split("=", 1) for kv in item.split("|") if kv]
            return {p[0]: (p[1] if len(p) > 1 else "") for p in pairs}
        if not isinstance(item, dict):
            raise wrong("a map of strings")
        return {_text(k): _text(v) for k, v in item.items()}
    if attr == "annotations":
        if not isinstance(item, dict):
            raise wrong("a map with string keys")
        return {_text(k): v for k, v in item.items()}
    if attr == "exception":
        if not isinstance(item, (bytes, bytearray)):
            raise wrong("binary (bin)")
        return bytes(item)
    if attr in ("exec_time", "round_trip"):
        try:
            number = float(item)
        except (TypeError, ValueError):
            raise wrong("a number") from None
        return max(0.0, number)
    return item  # body


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


# Segmentation: events larger than a frame travel as segment envelopes, as over the brokers.
def split(data: bytes, max_payload: int) -> List[bytes]:
    """Cuts an encoded envelope into encoded segment envelopes of at most ``max_payload`` bytes."""
    if len(data) <= max_payload:
        return [data]
    chunk = max(1, max_payload - 256)
    count = (len(data) + chunk - 1) // chunk
    seg = new_id()
    return [
        Event(body=data[i * chunk:(i + 1) * chunk],
              tags={"_seg": seg, "_n": str(i), "_of": str(count)}).to_bytes()
        for i in range(count)
    ]


class Reassembler:
    """Collects segment envelopes until an event is complete."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024):
        self.max_bytes = max_bytes
        self.pending: Dict[str, Dict[int, bytes]] = {}

    @staticmethod
    def is_segment(event: Event) -> bool:
        return "_seg" in event.tags

    def add(self, segment: Event) -> Optional[bytes]:
        """Adds a segment; returns the whole encoded event once every part arrived."""
        try:
            seg, n, of = segment.tags["_seg"], int(segment.tags["_n"]), int(segment.tags["_of"])
        except (KeyError, ValueError) as error:
            raise DecodeError(f"malformed segment: {error}") from None
        if not 0 <= n < of or not isinstance(segment.body, (bytes, bytearray)):
            raise DecodeError("malformed segment")
        parts = self.pending.setdefault(seg, {})
        parts[n] = bytes(segment.body)
        if sum(len(p) for p in parts.values()) > self.max_bytes:
            del self.pending[seg]
            raise DecodeError("segmented event too large")
        if len(parts) < of:
            return None
        del self.pending[seg]
        return b"".join(parts[i] for i in range(of))
