"""Request-body size limit, as raw ASGI middleware (before FastAPI reads or parses anything).

Without it a client could make the server buffer a body of any size before a single field is
checked. The body is read here, never kept past the limit (so memory per request is bounded), and
handed on whole. A body over the limit (declared by Content-Length or counted as it arrives) is
answered 413; up to DRAIN bytes of it are read and dropped first, because closing a socket with
unread data makes the kernel reset the connection and the client would see a broken pipe instead
of the answer. The answer has OpenAI's error shape, like every other error of the server.
"""

from __future__ import annotations

import json


def _error(limit: int) -> bytes:
    return json.dumps({"error": {"message": f"request body is larger than this server's limit of {limit} bytes",
                                 "type": "invalid_request_error", "param": None,
                                 "code": "request_too_large"}}).encode()


DRAIN = 8 << 20  # how much of an oversized body is read (and dropped) so the client gets its 413


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes
        self.drain = max(DRAIN, 2 * max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send, receive, 0)
        chunks, seen, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":  # the client left before sending it all
                return None
            chunks.append(msg.get("body", b""))
            seen += len(chunks[-1])
            more = msg.get("more_body", False)
            if seen > self.max_bytes:
                return await self._reject(send, receive, seen if more else None)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls: wait for http.disconnect, as the app expects

        await self.app(scope, replay, send)

    async def _reject(self, send, receive, seen: int | None):
        """413; first drop what the client is still sending (`seen`: bytes read so far, None: all read)."""
        while seen is not None and seen < self.drain:
            msg = await receive()
            if msg["type"] != "http.request":
                return None
            seen += len(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
        body = _error(self.max_bytes)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
