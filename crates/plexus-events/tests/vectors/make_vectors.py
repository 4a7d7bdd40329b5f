"""Writes envelope.json: envelope test vectors, shared by the Rust, Python and Node codecs.

Each vector is written from Mercury's published description of the event envelope wire format
(field names, one-character compact keys, types, "nil equals absent", "headers always written",
"unknown keys ignored", any integer width, float32 or float64) and encoded here with the
reference Python MsgPack library, so the bytes come from an encoder none of our codecs share.

`expected` is the decoded envelope as JSON with the standard keys: absent fields are left out,
`status` is 200 when the vector has none, binary values are {"$bin": "<hex>"}. Run with
`.tools/venv/bin/python crates/plexus-events/tests/vectors/make_vectors.py`.
"""

import json
import os

import msgpack

BIN = bytes(range(256))


def pack(value, single_float=False):
    return msgpack.packb(value, use_bin_type=True, use_single_float=single_float).hex()


def b(data):
    return {"$bin": data.hex()}


EVERY_FIELD = {
    "id": "a1b2c3",
    "to": "hello.world",
    "from": "hello.caller",
    "reply_to": "inbox.k1@origin1",
    "trace_id": "0af7651916cd43dd8448eb211c80319c",
    "trace_path": "GET /api/hello",
    "span_id": "b7ad6b7169203331",
    "cid": "order-42",
    "status": 201,
    "headers": {"content-type": "application/json", "user": "demo"},
    "body": {"name": "Peter", "n": 3, "ok": True, "list": [1, "two", None], "nested": {"x": -7}},
    "tags": {"rpc": "5000", "my_cid": "order-42"},
    "annotations": {"step": "validate", "count": 2},
    "exception": b"\xac\xed\x00\x05",
    "stack": "java.lang.IllegalArgumentException: demo\n\tat Demo.main",
    "obj_type": "com.example.PoJo",
    "exec_time": 1.5,
    "round_trip": 2.25,
}
COMPACT = {
    "id": "0", "to": "T", "from": "F", "reply_to": "R", "trace_id": "t", "trace_path": "p",
    "span_id": "s", "cid": "X", "status": "S", "headers": "H", "body": "B", "tags": "7",
    "annotations": "6", "exception": "4", "stack": "5", "obj_type": "O", "exec_time": "1",
    "round_trip": "2",
}


def expected_of(fields):
    out = {}
    for key, value in fields.items():
        out[key] = b(value) if isinstance(value, bytes) else value
    out.setdefault("status", 200)
    return out


vectors = []
vectors.append({
    "name": "standard form, every field",
    "form": "standard",
    "msgpack": pack(EVERY_FIELD, single_float=True),
    "expected": expected_of(EVERY_FIELD),
})
vectors.append({
    "name": "compact form, every field",
    "form": "compact",
    "msgpack": pack({COMPACT[k]: v for k, v in EVERY_FIELD.items()}, single_float=True),
    "expected": expected_of(EVERY_FIELD),
})
vectors.append({
    "name": "compact form, tags as k=v|k text",
    "form": "compact",
    "msgpack": pack({"0": "e2", "T": "a.b", "7": "x=1|flag|y=two", "S": 200}),
    "expected": {"id": "e2", "to": "a.b", "status": 200, "tags": {"x": "1", "flag": "", "y": "two"}},
})
nil_fields = {k: None for k in EVERY_FIELD}
nil_fields["id"] = "e3"
vectors.append({
    "name": "standard form, every optional field nil (nil equals absent)",
    "form": "standard",
    "msgpack": pack(nil_fields),
    "expected": {"id": "e3", "status": 200},
})
vectors.append({
    "name": "compact form, nil fields",
    "form": "compact",
    "msgpack": pack({"0": "e4", "T": "a.b", "R": None, "X": None, "B": None, "H": None}),
    "expected": {"id": "e4", "to": "a.b", "status": 200},
})
vectors.append({
    "name": "binary body (bin 8 and bin 16)",
    "form": "standard",
    "msgpack": pack({"id": "e5", "to": "files.save", "headers": {}, "body": BIN}),
    "expected": {"id": "e5", "to": "files.save", "status": 200, "body": b(BIN)},
})
vectors.append({
    "name": "binary body nested in a map",
    "form": "standard",
    "msgpack": pack({"id": "e6", "headers": {}, "body": {"file": b"\x00\xff", "name": "x.bin"}}),
    "expected": {"id": "e6", "status": 200, "body": {"file": b(b"\x00\xff"), "name": "x.bin"}},
})
vectors.append({
    "name": "no status: 200",
    "form": "standard",
    "msgpack": pack({"id": "e7", "headers": {}}),
    "expected": {"id": "e7", "status": 200},
})
vectors.append({
    "name": "error: status 404 as uint16, body the message, stack text",
    "form": "standard",
    "msgpack": pack({"id": "e8", "status": 404, "headers": {}, "body": "Route no.such not found",
                     "stack": "no.such: not found"}),
    "expected": {"id": "e8", "status": 404, "body": "Route no.such not found",
                 "stack": "no.such: not found"},
})
vectors.append({
    "name": "wider integers and float64 times",
    "form": "compact",
    "msgpack": msgpack.packb({"0": "e9", "S": 200, "1": 0.5, "2": 3}, use_bin_type=True).hex(),
    "expected": {"id": "e9", "status": 200, "exec_time": 0.5, "round_trip": 3.0},
})
vectors.append({
    "name": "unknown keys are ignored",
    "form": "standard",
    "msgpack": pack({"id": "e10", "headers": {"a": "b"}, "future_field": [1, 2], "Z": 1,
                     "body": "kept"}),
    "expected": {"id": "e10", "status": 200, "headers": {"a": "b"}, "body": "kept"},
})

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "envelope.json"), "w", encoding="utf-8") as out:
    json.dump({"vectors": vectors}, out, indent=2, ensure_ascii=False)
    out.write("\n")
print(f"wrote {len(vectors)} vectors")
