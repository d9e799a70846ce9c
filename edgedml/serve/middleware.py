"""ASGI middleware in front of every route: the bearer-token check, then the limit on a request body's size.

Both answer before the route runs: a request without the token is refused before its body is read,
and a body over the limit is refused from its ``Content-Length`` or, without one, as soon as the bytes
received pass the limit (a 10 GB upload is never read into memory or onto disk).
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The page can only be opened by the browser's navigation, which sends no header: it alone takes ?token=.
QUERY_TOKEN_PATHS = ("/",)


class BearerAuth:
    """Every HTTP request must carry ``Authorization: Bearer <token>`` (compared in constant time).

    ``GET /`` may carry the token as ``?token=`` instead; the page then sends it as a header itself.
    """

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._authorized(scope):
            response = JSONResponse(
                {"error": "missing or wrong bearer token: send 'Authorization: Bearer <token>'"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        scheme, _, credentials = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self._matches(credentials.strip()):
            return True
        if scope["method"] == "GET" and scope["path"] in QUERY_TOKEN_PATHS:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            return any(self._matches(value) for value in query.get("token", []))
        return False

    def _matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self.token)


class BodyLimit:
    """Refuse a request body of more than ``max_bytes`` with 413 and a JSON error."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def too_large(self) -> str:
        return f"request body over the upload limit of {self.max_bytes / 2**20:g} MiB"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > self.max_bytes):
            bad_header = not length.strip().isdigit()
            response = JSONResponse(
                {"error": f"bad Content-Length {length[:40]!r}" if bad_header else self.too_large()},
                status_code=400 if bad_header else 413,
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self.too_large())
            return message

        await self.app(scope, limited, send)
