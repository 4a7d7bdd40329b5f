"""The calculator's `add` service: GET /add?a=1&b=2 answers {"result": 3, "instance": ...}.

Python standard library only. Listens on 127.0.0.1:$PLEXUS_PORT_http (the port the agent gave
this instance); PLEXUS_ALLOC_ID names the instance in every answer. GET /health answers 200.
"""

from calc_service import serve

serve("add", lambda a, b: a + b)
