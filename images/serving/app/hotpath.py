"""POSTs to the prediction endpoints, handed to their handlers without FastAPI's per-request machinery.

For every request FastAPI walks its route list (a regular expression per route until one
matches), passes two more middlewares (exceptions, exit stacks) and, around the endpoint,
solves its dependencies, reads telemetry settings and opens two exit stacks: about 40 us of CPU
per request here, half of what a whole one-row prediction costs. The prediction endpoints use
none of it: each takes the ``Request`` (plus the path's ``str`` parameters), reads and checks the
body itself and returns a ``Response``. This pure ASGI middleware calls those same handlers
directly for ``POST`` on their paths (matched with the routes' own regular expressions).

Everything else goes through FastAPI as before: other methods on these paths (405), other
paths, a trailing slash (FastAPI's redirect), apps mounted under a ``root_path``. The routes stay
registered in FastAPI, so the OpenAPI schema and /docs list them unchanged. An exception from a
handler propagates to Starlette's outer error middleware (500), as it would through FastAPI.
tests/test_serving_fastpath.py checks that this middleware picks, for any path, the route
FastAPI's router would pick.
"""

from __future__ import annotations

from fastapi.routing import APIRoute
from starlette.convertors import StringConvertor
from starlette.requests import Request


class HotRoutes:
    """Pure ASGI middleware: ``POST`` to one of ``routes`` goes straight to the route's endpoint."""

    def __init__(self, app, routes: list[APIRoute]) -> None:
        self.app = app
        for route in routes:
            if "POST" not in route.methods:
                raise ValueError(f"{route.path} does not take POST")
            # The endpoint is called with the matched strings as they are: only str parameters qualify.
            if not all(isinstance(c, StringConvertor) for c in route.param_convertors.values()):
                raise ValueError(f"{route.path}: only str path parameters are supported")
        self.routes = [(route.path_regex.match, route) for route in routes]
        # A path without parameters is found by one dictionary look-up (a regular expression per route
        # costs ~0.15 us), unless a route listed before it would also match it (first match wins).
        # Its regular expression ends in "$", which also matches before a final newline ("/predict%0A").
        self.exact: dict[str, APIRoute] = {}
        for n, route in enumerate(routes):
            if route.param_convertors:
                continue
            for path in (route.path, route.path + "\n"):
                if not any(m(path) for m, _ in self.routes[:n]):
                    self.exact.setdefault(path, route)
        # Any other path can only match the routes left: a route without parameters matches only the
        # two paths above, so it is left out of the scan when both are looked up.
        self.scanned = [
            (m, r) for m, r in self.routes if not (self.exact.get(r.path) is r and self.exact.get(r.path + "\n") is r)
        ]

    def find(self, path: str) -> tuple[APIRoute, dict[str, str]] | None:
        """The route a POST to ``path`` is handed to, with its path parameters; None: FastAPI routes it."""
        route = self.exact.get(path)
        if route is not None:
            return route, {}
        for match, route in self.scanned:
            found = match(path)
            if found is not None:
                return route, found.groupdict()
        return None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            found = self.find(scope["path"])
            if found is not None:
                route, params = found
                # What FastAPI's router would record: the metrics middleware labels by scope["route"].
                scope["route"] = route
                scope["endpoint"] = route.endpoint
                scope["path_params"] = params
                response = await route.endpoint(Request(scope, receive, send), **params)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
