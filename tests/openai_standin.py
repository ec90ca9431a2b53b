"""A small OpenAI-compatible chat-completions server for tests, on 127.0.0.1 only, answering from scripted replies.

    with OpenAIStandIn(script={"prompt text": [Reply.status(429), Reply.answer("[7, 8]")]}) as server:
        ... ServedJudge(server.url, "standin-judge") ...
        server.received  # what each request carried: model, temperature, max_tokens, seed, decoded image sizes

A request is matched to its script by the text of its last text part; each request for that text takes the next
reply of its list (the last one repeats); unmatched texts get `default`. Written on the standard library's
http.server, so the test suite needs no server package; it speaks just enough of the API for the `openai` client.
"""
from __future__ import annotations

import base64
import dataclasses
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "standin-judge"
FINGERPRINT = "fp_standin_1"


@dataclasses.dataclass(frozen=True)
class Reply:
    """One scripted reply: HTTP `status` with `body` (JSON-able, or raw bytes sent as they are), after `delay_s`."""

    status: int = 200
    body: object = None
    delay_s: float = 0.0
    headers: tuple = ()

    @classmethod
    def answer(cls, text: str | None, delay_s: float = 0.0, finish_reason: str = "stop") -> "Reply":
        """A normal completion whose message content is `text`."""
        return cls(200, {"text": text, "finish_reason": finish_reason}, delay_s)

    @classmethod
    def slow(cls, text: str, delay_s: float) -> "Reply":
        return cls.answer(text, delay_s)

    @classmethod
    def error(cls, status: int, message: str = "scripted error", retry_after_s: float | None = None) -> "Reply":
        headers = (("Retry-After", str(retry_after_s)),) if retry_after_s is not None else ()
        return cls(status, {"error": {"message": message, "type": "scripted", "code": status}}, 0.0, headers)

    @classmethod
    def garbage(cls) -> "Reply":
        """HTTP 200 whose body is not JSON at all."""
        return cls(200, b"<html>upstream hiccup</html>")

    @classmethod
    def truncated(cls) -> "Reply":
        """HTTP 200 whose JSON body stops half-way."""
        return cls(200, b'{"id": "chatcmpl-cut", "object": "chat.completion", "choices": [{"index": 0, "mess')


class OpenAIStandIn:
    """The server; a context manager (starts on enter, stops on exit). See the module docstring."""

    def __init__(self, script: dict[str, list[Reply]] | None = None, default: Reply = Reply.answer("OK"),
                 model: str = MODEL, fingerprint: str | None = FINGERPRINT, reports_model: str | None = None):
        """model: the name requests must use; reports_model: the id answers carry (a hosted alias resolves to a
        dated snapshot), default `model`."""
        self.script = {text: list(replies) for text, replies in (script or {}).items()}
        self.default, self.model, self.fingerprint = default, model, fingerprint
        self.reports_model = reports_model or model
        self.received: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._served: dict[str, int] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="openai-standin", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> "OpenAIStandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def requests_for(self, text: str) -> list[dict]:
        return [r for r in self.received if r["text"] == text]

    # ---- handling
    def _next_reply(self, text: str) -> Reply:
        with self._lock:
            replies = self.script.get(text)
            if not replies:
                return self.default
            n = self._served.get(text, 0)
            self._served[text] = n + 1
            return replies[min(n, len(replies) - 1)]

    def _record(self, request: dict) -> dict:
        content = request["messages"][-1]["content"]
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        texts = [p["text"] for p in parts if p.get("type") == "text"]
        seen = {"time": time.monotonic(), "model": request.get("model"), "temperature": request.get("temperature"),
                "top_p": request.get("top_p"), "seed": request.get("seed"), "max_tokens": request.get("max_tokens"),
                "text": texts[-1] if texts else "",
                "image_sizes": [_data_url_size(p["image_url"]["url"]) for p in parts if p.get("type") == "image_url"]}
        with self._lock:
            self.received.append(seen)
        return seen

    def _completion(self, text: str | None, finish_reason: str) -> dict:
        return {"id": f"chatcmpl-standin-{len(self.received)}", "object": "chat.completion", "created": int(time.time()),
                "model": self.reports_model, "system_fingerprint": self.fingerprint,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish_reason}],
                "usage": {"prompt_tokens": 10, "completion_tokens": len((text or "").split()),
                          "total_tokens": 10 + len((text or "").split())}}

    def _handler_class(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": standin.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length))
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                if request.get("model") != standin.model:
                    return self._send(404, {"error": {"message": f"The model `{request.get('model')}` does not exist."}})
                seen = standin._record(request)
                reply = standin._next_reply(seen["text"])
                with standin._lock:
                    standin.in_flight += 1
                    standin.max_in_flight = max(standin.max_in_flight, standin.in_flight)
                try:
                    time.sleep(reply.delay_s)
                finally:
                    with standin._lock:
                        standin.in_flight -= 1
                body = reply.body
                if isinstance(body, dict) and "text" in body:
                    body = standin._completion(body["text"], body["finish_reason"])
                self._send(reply.status, body, reply.headers)

            def _send(self, status: int, body, headers=()) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in headers:
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout): nothing to send
                    pass

        return Handler


def _data_url_size(url: str) -> tuple[int, int] | str:
    """(width, height) of a base64 image data URL, or a note saying why it could not be read."""
    from PIL import Image

    prefix = "data:image/png;base64,"
    if not url.startswith(prefix):
        return f"not a PNG data URL: {url[:30]}"
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix):]))).size
