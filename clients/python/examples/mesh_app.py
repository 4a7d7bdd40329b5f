"""An example event-mesh app in Python, used by `plexus demo events` and the end-to-end tests.

    python mesh_app.py --node ws://127.0.0.1:8090/ws/events --app py-app --routes hello.world,py.echo

Every route answers with who served it and echoes the body; a body of "boom" raises (500), "fail"
answers 422, "sleep" takes 2 s. With --load-route ROUTE the app also serves ROUTE, which fires
{"count": N} concurrent requests at {"route": R} and answers how many came back intact.
"""

import argparse
import asyncio
import collections
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import plexus_events  # noqa: E402
from plexus_events import Event, EventError  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--node", required=True)
    parser.add_argument("--app", default="py-app")
    parser.add_argument("--routes", default="")
    parser.add_argument("--private", default="")
    parser.add_argument("--load-route", default="")
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--token", default=os.environ.get("PLEXUS_EVENTS_TOKEN"))
    args = parser.parse_args()
    app = await plexus_events.connect(args.node, app=args.app, token=args.token)

    def serve(route):
        async def handler(event: Event):
            if event.body == "boom":
                raise RuntimeError("asked to fail")
            if event.body == "fail":
                raise EventError(422, f"{route} refuses 'fail'")
            if event.body == "sleep":
                await asyncio.sleep(2)
            return {"route": route, "app": args.app, "lang": "python", "origin": app.origin,
                    "body": event.body, "cid": event.cid, "trace_id": event.trace_id}
        return handler

    async def load(event: Event):
        route, count = event.body["route"], int(event.body["count"])
        timeout = float(event.body.get("timeout", 30))
        replies = await asyncio.gather(*(app.request(route, i, timeout=timeout)
                                         for i in range(count)))
        ok = sum(1 for i, r in enumerate(replies)
                 if r.status == 200 and isinstance(r.body, dict) and r.body.get("body") == i)
        statuses = collections.Counter(str(r.status) for r in replies)
        served = collections.Counter(r.body.get("app", "?") for r in replies
                                     if isinstance(r.body, dict))
        return {"ok": ok, "failed": count - ok, "statuses": dict(statuses),
                "served_by": dict(served)}

    for route in filter(None, args.routes.split(",")):
        await app.register(route, serve(route), workers=args.workers)
    for route in filter(None, args.private.split(",")):
        await app.register(route, serve(route), workers=args.workers, private=True)
    if args.load_route:
        await app.register(args.load_route, load, workers=4)
    print(f"ready app={args.app} node={app.node_app} origin={app.origin}", flush=True)
    await app.wait_closed()
    print("connection closed", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
