"""A small fake Anthropic Messages API on 127.0.0.1 that plays scripted conversations.

It speaks the wire format the real clients expect (the `anthropic` SDK, Claude Code):

    HEAD /                      200 (Claude Code's connectivity check)
    POST /v1/messages[?beta=…]  the next scripted turn: a JSON message, or with `"stream": true` the SSE events
                                message_start, content_block_start / content_block_delta / content_block_stop per
                                block (text_delta, input_json_delta), message_delta (stop_reason, usage), message_stop.
                                Message threads (the `thread` field the anthropic SDK sends: `create`, then `continue`
                                from a reply's id with only the new messages, no system or tools) are kept here, so
                                scripts and `messages()` always see the whole conversation.
    anything else               404 with the API's error body

Errors use the API's shape, `{"type": "error", "error": {"type": ..., "message": ...}}`, with the status code
and headers (`retry-after`, ...) of the turn. Every request is recorded (`FakeAnthropic.requests`).

A script is a list of turns, consumed in order by the message requests. A turn is a `Turn` (see `reply`, `text`,
`tool_use`, `error`, `drop`) or a function of the request (its whole conversation) that returns one, for answers
that depend on what the client sent. When the script is exhausted the server answers with `error(500)` and records
the request in `unscripted`.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["FakeAnthropic", "Recorded", "Turn", "drop", "error", "reply", "text", "tool_result_blocks", "tool_use"]

_ids = itertools.count(1)
CHUNK = 24  # characters per text / input_json delta: several deltas per block, as the real API sends
POLL_S = 0.02  # how often the server checks for shutdown (the default 0.5 s slows every test's teardown)
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}


@dataclass
class Turn:
    """One scripted answer: content blocks with a stop reason and usage, or an HTTP error, or a dropped connection."""

    content: list[dict] = field(default_factory=list)
    stop_reason: str | None = None  # None: "tool_use" when a block is a tool_use, else "end_turn"
    input_tokens: int = 100
    output_tokens: int = 20
    status: int = 200
    error_type: str = ""
    message: str = ""
    details: dict | None = None  # error.details, e.g. {"error_code": "thread_not_found"}
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering (a connection error for the client)

    def message_json(self, model: str) -> dict:
        stop = self.stop_reason or ("tool_use" if any(b["type"] == "tool_use" for b in self.content) else "end_turn")
        return {"id": f"msg_fake{next(_ids):06d}", "type": "message", "role": "assistant", "model": model,
                "content": self.content, "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def tool_use(name: str, input: dict, id: str | None = None) -> dict:
    return {"type": "tool_use", "id": id or f"toolu_fake{next(_ids):06d}", "name": name, "input": input}


def reply(*blocks: dict | str, stop_reason: str | None = None, input_tokens: int = 100, output_tokens: int = 20) -> Turn:
    """An assistant message; plain strings become text blocks."""
    content = [text(b) if isinstance(b, str) else b for b in blocks]
    return Turn(content, stop_reason, input_tokens, output_tokens)


def error(status: int, message: str = "scripted error", error_type: str | None = None, details: dict | None = None,
          **headers: str) -> Turn:
    """An API error; keyword headers use underscores for dashes (retry_after="0")."""
    return Turn(status=status, error_type=error_type or ERROR_TYPES.get(status, "api_error"), message=message,
                details=details, headers={k.replace("_", "-"): v for k, v in headers.items()})


def drop() -> Turn:
    return Turn(drop=True)


def tool_result_blocks(body: dict) -> list[dict]:
    """The tool_result blocks of the last user message of a request body."""
    last = body["messages"][-1]
    content = last["content"] if isinstance(last["content"], list) else []
    return [b for b in content if b.get("type") == "tool_result"]


def sse_events(message: dict) -> list[tuple[str, dict]]:
    """The stream the API sends for `message`: start, each block in deltas, the stop reason, stop."""
    start = {**message, "content": [], "stop_reason": None,
             "usage": {**message["usage"], "output_tokens": 1}}
    events = [("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            opening, payload, key, kind = {"type": "text", "text": ""}, block["text"], "text", "text_delta"
        elif block["type"] == "tool_use":
            opening = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            payload, key, kind = json.dumps(block["input"]), "partial_json", "input_json_delta"
        else:
            raise ValueError(f"unsupported block type {block['type']!r}")
        events.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": opening}))
        for i in range(0, len(payload), CHUNK):
            delta = {"type": kind, key: payload[i:i + CHUNK]}
            events.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                     "usage": {"output_tokens": message["usage"]["output_tokens"]}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: dict | None  # as sent
    conversation: dict | None = None  # for message requests: the body with the thread's history filled in


ScriptItem = Turn | Callable[[dict], Turn]


class FakeAnthropic:
    """`with FakeAnthropic([turn, ...]) as api:` serves on `api.url` until the block ends."""

    def __init__(self, script: list[ScriptItem] | None = None):
        self.script = list(script or [])
        self.requests: list[Recorded] = []
        self.unscripted: list[dict] = []
        self.threads: dict[str, dict] = {}  # reply id -> the conversation up to and including that reply
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(POLL_S,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def messages(self) -> list[dict]:
        """The whole conversation of each message request, in order (threads filled in)."""
        return [r.conversation for r in self.requests if r.conversation is not None]

    def _conversation(self, body: dict) -> dict | None:
        """`body` with the history of the thread it continues; None for an unknown thread."""
        thread = body.get("thread") or {}
        own = {k: v for k, v in body.items() if k != "thread"}
        if thread.get("type") != "continue":
            return own
        with self._lock:
            history = self.threads.get(thread.get("previous_message_id"))
        if history is None:
            return None
        return {**history, **own, "messages": history["messages"] + body["messages"]}

    def _remember(self, body: dict, conversation: dict, message: dict) -> None:
        if body.get("thread"):
            reply = {"role": "assistant", "content": message["content"]}
            with self._lock:
                self.threads[message["id"]] = {**conversation, "messages": conversation["messages"] + [reply]}

    def _next(self, body: dict) -> Turn:
        with self._lock:
            if not self.script:
                self.unscripted.append(body)
                return error(500, "the fake API's script is exhausted")
            item = self.script.pop(0)
        return item(body) if callable(item) else item

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _record(self, body: dict | None, conversation: dict | None = None) -> None:
                with fake._lock:
                    fake.requests.append(Recorded(self.command, self.path, dict(self.headers), body, conversation))

            def _send(self, status: int, payload: bytes, content_type: str, headers: dict[str, str] | None = None):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("request-id", f"req_fake{next(_ids):06d}")
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _json(self, status: int, obj: dict, headers: dict[str, str] | None = None):
                self._send(status, json.dumps(obj).encode(), "application/json", headers)

            def _not_found(self):
                self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": f"no route {self.path}"}})

            def do_HEAD(self):
                self._record(None)
                self._send(200, b"", "text/plain") if self.path == "/" else self._not_found()

            def do_GET(self):
                self._record(None)
                self._not_found()

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                route = self.path.split("?")[0]
                conversation = fake._conversation(body) if route == "/v1/messages" else None
                self._record(body, conversation)
                if route != "/v1/messages":
                    return self._not_found()
                if conversation is None:
                    turn = error(404, "thread not found", details={"error_code": "thread_not_found"})
                else:
                    turn = fake._next(conversation)
                if turn.drop:
                    self.close_connection = True
                    self.connection.close()
                    return
                if turn.status != 200:
                    detail = {"details": turn.details} if turn.details else {}
                    return self._json(turn.status, {"type": "error", "error": {"type": turn.error_type, "message": turn.message,
                                                                               **detail}}, turn.headers)
                message = turn.message_json(conversation.get("model", "claude-fake"))
                fake._remember(body, conversation, message)
                if not body.get("stream"):
                    return self._json(200, message, turn.headers)
                stream = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in sse_events(message))
                self._send(200, stream.encode(), "text/event-stream; charset=utf-8", {"Cache-Control": "no-cache", **turn.headers})

        return Handler
