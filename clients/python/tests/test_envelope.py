"""Envelope codec against the shared vectors (crates/plexus-events/tests/vectors/envelope.json)."""

import json
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from plexus_events.envelope import DecodeError, Event, Reassembler, split  # noqa: E402

VECTORS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "crates", "plexus-events",
                       "tests", "vectors", "envelope.json")


def canonical(value):
    if isinstance(value, (bytes, bytearray)):
        return {"$bin": bytes(value).hex()}
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def described(event):
    out = {"id": event.id, "status": event.status}
    for attr, key in [("to", "to"), ("from_", "from"), ("reply_to", "reply_to"),
                      ("trace_id", "trace_id"), ("trace_path", "trace_path"),
                      ("span_id", "span_id"), ("cid", "cid"), ("stack", "stack"),
                      ("obj_type", "obj_type"), ("exec_time", "exec_time"),
                      ("round_trip", "round_trip")]:
        if getattr(event, attr) is not None:
            out[key] = getattr(event, attr)
    for attr in ("headers", "tags", "annotations"):
        if getattr(event, attr):
            out[attr] = canonical(getattr(event, attr))
    if event.body is not None:
        out["body"] = canonical(event.body)
    if event.exception is not None:
        out["exception"] = canonical(event.exception)
    return out


class Vectors(unittest.TestCase):
    def test_every_vector_decodes_and_round_trips(self):
        with open(VECTORS, encoding="utf-8") as f:
            vectors = json.load(f)["vectors"]
        self.assertGreaterEqual(len(vectors), 10)
        for vector in vectors:
            with self.subTest(vector["name"]):
                event, compact = Event.decode(bytes.fromhex(vector["msgpack"]))
                self.assertEqual(compact, vector["form"] == "compact")
                self.assertEqual(described(event), vector["expected"])
                for form in (False, True):
                    back, detected = Event.decode(event.to_bytes(compact=form))
                    self.assertEqual(back, event)
                    self.assertEqual(detected, form)
                self.assertIn("headers", Event.from_bytes(event.to_bytes()).to_map())

    def test_errors_name_the_field(self):
        import msgpack
        with self.assertRaisesRegex(DecodeError, '"status"'):
            Event.from_bytes(msgpack.packb({"status": "ok"}))
        with self.assertRaisesRegex(DecodeError, "map"):
            Event.from_bytes(msgpack.packb([1]))
        with self.assertRaisesRegex(DecodeError, "MsgPack"):
            Event.from_bytes(b"\x82\xa1")

    def test_segments_reassemble(self):
        event = Event(to="a.b", body=bytes(range(256)) * 40)
        parts = split(event.to_bytes(), 1024)
        self.assertGreater(len(parts), 5)
        r = Reassembler()
        whole = None
        for part in reversed(parts):
            self.assertLessEqual(len(part), 1024)
            whole = r.add(Event.from_bytes(part))
        self.assertEqual(Event.from_bytes(whole), event)


if __name__ == "__main__":
    unittest.main()
