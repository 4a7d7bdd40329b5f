"""What `add` and `sub` share: a small threaded HTTP server (standard library only).

GET /<op>?a=NUMBER&b=NUMBER -> 200 {"op", "a", "b", "result", "instance", "pid"}
GET /health                 -> 200 ok
anything else               -> 404; a bad number -> 400 naming the parameter.
"""

import http.server
import json
import os
import signal
import sys
import urllib.parse


def serve(op, fn):
    port = int(os.environ["PLEXUS_PORT_http"])
    instance = os.environ.get("PLEXUS_ALLOC_ID", "local")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm and
        # the caller's delayed ACK add 40 ms to every answer on a kept-alive connection.
        disable_nagle_algorithm = True

        def answer(self, code, body, kind="application/json"):
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/health":
                return self.answer(200, "ok\n", "text/plain")
            if url.path != "/" + op:
                return self.answer(404, json.dumps({"error": "no such path: " + url.path}))
            query = urllib.parse.parse_qs(url.query)
            numbers = {}
            for name in ("a", "b"):
                try:
                    numbers[name] = float(query[name][0])
                except (KeyError, ValueError):
                    return self.answer(400, json.dumps({"error": "parameter %r must be a number" % name}))
            result = fn(numbers["a"], numbers["b"])
            if result == int(result):
                result = int(result)
            self.answer(200, json.dumps({
                "op": op, "a": numbers["a"], "b": numbers["b"], "result": result,
                "instance": instance, "pid": os.getpid(),
            }))

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    # SIGTERM (the agent's stop): finish the request in hand, then exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("%s listening on 127.0.0.1:%d as %s" % (op, port, instance), flush=True)
    server.serve_forever()
