"""Who may call what, and how much they may send: the admin-token policy and the body-size limit.

Admin routes (/admin/reload, /v1/load_lora_adapter, /v1/unload_lora_adapter) change what the server
serves. With $FLYWHEEL_ADMIN_TOKEN (serving.admin_token_env) set they need `Authorization: Bearer
<token>` (401 otherwise). Without a token they are open on a loopback address only (a developer's
machine); on any other address the server refuses to offer them (403) rather than expose them.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Literal

AdminMode = Literal["token", "loopback", "disabled"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def admin_mode(host: str, token: str | None) -> AdminMode:
    """token: admin calls need the bearer token; loopback: open, the server only listens on this
    machine; disabled: no token on an exposed address, so the admin routes answer 403."""
    if token:
        return "token"
    return "loopback" if is_loopback(host) else "disabled"


def admin_refusal(mode: AdminMode, token: str | None, authorization: str | None) -> tuple[int, str] | None:
    """None when the call may go ahead, else (HTTP status, why)."""
    if mode == "disabled":
        return 403, ("admin endpoints are off: the server listens on a non-loopback address and no admin token is "
                     "set; set FLYWHEEL_ADMIN_TOKEN (serving.admin_token_env) and restart")
    if mode == "token":
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), (token or "").encode()):
            return 401, "admin endpoint: send Authorization: Bearer <the admin token> (serving.admin_token_env)"
    return None


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 before the app sees it
    (Content-Length checked first; a chunked body is counted as it arrives). The rest of the body is
    read and thrown away by uvicorn, so a client that sends all of it before reading still gets the 413."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(send)
            return
        if declared is not None:  # within the limit: nothing to count
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._too_large(send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send) -> None:
        body = json.dumps({"error": {"message": f"request body larger than {self.limit} bytes (serving.max_body_bytes)",
                                     "type": "invalid_request_error", "param": None}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
