"""The calculator's `sub` service: GET /sub?a=5&b=2 answers {"result": 3, "instance": ...}.

Python standard library only; see calc_service.py.
"""

from calc_service import serve

serve("sub", lambda a, b: a - b)
