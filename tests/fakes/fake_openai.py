"""A scriptable fake OpenAI-compatible server on 127.0.0.1, for tests and demos without an API key.

Layer: test support (`tests/fakes`, outside the product). It imports only the standard library, so tests can
start it in a few milliseconds and `python -m fakes.fake_openai` runs it for a demo.

Endpoints: ``POST /v1/chat/completions`` (plain answers, tool calls, structured output through
``response_format: json_schema``, and streaming as server-sent events when ``stream`` is true),
``POST /v1/embeddings`` (deterministic hash vectors) and ``GET /v1/models``.

A *script* says what the model answers, in order: a list of `FakeReply` (or plain strings, or dicts with the
same fields), or a callable that receives the parsed `ChatRequest` and returns a reply. Replies can be slow
(to exercise timeouts), fail with an HTTP status (to exercise retries and fallbacks), or carry a raw body
(to exercise malformed answers). Every request is recorded in `FakeOpenAI.requests`, so a test can check
what opsmedic actually sent (for example, that a pod log only ever appears inside a delimited data block).

    with FakeOpenAI([tool_call("pod_logs", {"pod": "p-0"}), tool_call("submit_diagnosis", {...})]) as fake:
        llm = build_llm(Settings(llm_base_url=fake.base_url, llm_model=fake.model))
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

LOCAL_HOST = "127.0.0.1"


@dataclass(frozen=True)
class FakeToolCall:
    name: str
    arguments: dict[str, Any] | str  # a str is sent verbatim: lets a test send malformed JSON arguments
    id: str = ""


@dataclass(frozen=True)
class FakeReply:
    """One canned answer. `content` and `tool_calls` form a normal completion; `status` other than 200
    returns an OpenAI-style error; `body` / `raw` replace the whole JSON body / raw bytes."""

    content: str | None = None
    tool_calls: tuple[FakeToolCall, ...] = ()
    status: int = 200
    delay_s: float = 0.0
    body: dict[str, Any] | None = None
    raw: str | None = None
    usage: tuple[int, int] | None = None  # (prompt, completion) tokens; estimated from the text when None
    finish_reason: str | None = None


def text(content: str, **kw: Any) -> FakeReply:
    """An ordinary assistant answer (streamed word by word when the request asks for a stream)."""
    return FakeReply(content=content, **kw)


def tool_call(name: str, arguments: dict[str, Any] | str, **kw: Any) -> FakeReply:
    """The model calls one tool."""
    return FakeReply(tool_calls=(FakeToolCall(name, arguments),), **kw)


def tool_calls(*calls: tuple[str, dict[str, Any] | str], **kw: Any) -> FakeReply:
    """The model calls several tools in one turn."""
    return FakeReply(tool_calls=tuple(FakeToolCall(n, a) for n, a in calls), **kw)


def json_reply(obj: Any, **kw: Any) -> FakeReply:
    """A structured-output answer: the JSON object as the message content (response_format json_schema)."""
    return FakeReply(content=json.dumps(obj), **kw)


def error(status: int = 500, message: str = "the fake model failed on purpose", **kw: Any) -> FakeReply:
    return FakeReply(status=status, body={"error": {"message": message, "type": "server_error", "code": None}},
                     **kw)


def slow(seconds: float, then: FakeReply | str = "(late answer)") -> FakeReply:
    """Answer only after `seconds`: longer than the client's timeout, it is a timeout."""
    reply = text(then) if isinstance(then, str) else then
    return FakeReply(**{**reply.__dict__, "delay_s": seconds})


@dataclass
class ChatRequest:
    """What the client sent to /v1/chat/completions, parsed for scripts and assertions."""

    body: dict[str, Any]
    index: int  # 0-based position among the chat requests this server received

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages") or [])

    @property
    def tool_names(self) -> list[str]:
        return [str(t.get("function", {}).get("name")) for t in self.body.get("tools") or []]

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def json_schema(self) -> dict[str, Any] | None:
        rf = self.body.get("response_format") or {}
        if rf.get("type") == "json_schema":
            schema = rf.get("json_schema") or {}
            return dict(schema) if isinstance(schema, dict) else None
        return None

    def text_of(self, role: str) -> list[str]:
        out: list[str] = []
        for m in self.messages:
            if m.get("role") != role:
                continue
            c = m.get("content")
            if isinstance(c, str):
                out.append(c)
            elif isinstance(c, list):
                out.extend(str(p.get("text", "")) for p in c if isinstance(p, dict))
        return out

    @property
    def all_text(self) -> str:
        """Every message's text, joined: for "did this string reach the model?" assertions."""
        parts: list[str] = []
        for m in self.messages:
            c = m.get("content")
            if isinstance(c, str):
                parts.append(c)
            for tc in m.get("tool_calls") or []:
                parts.append(str(tc.get("function", {}).get("arguments", "")))
        return "\n".join(parts)

    @property
    def last_user(self) -> str:
        users = self.text_of("user")
        return users[-1] if users else ""


Script = Sequence["FakeReply | str | dict[str, Any]"] | Callable[[ChatRequest], "FakeReply | str"]


def _as_reply(item: FakeReply | str | dict[str, Any]) -> FakeReply:
    if isinstance(item, FakeReply):
        return item
    if isinstance(item, str):
        return text(item)
    data = dict(item)
    calls = tuple(FakeToolCall(c["name"], c.get("arguments", {})) for c in data.pop("tool_calls", []) or [])
    usage = data.pop("usage", None)
    return FakeReply(tool_calls=calls, usage=tuple(usage) if usage else None, **data)  # type: ignore[arg-type]


def _tokens(s: str) -> int:
    # a rough count (about four characters a token) is enough for accounting tests
    return max(1, len(s) // 4)


class FakeOpenAI:
    """The server. Use as a context manager, or call `start()` / `stop()`."""

    def __init__(self, script: Script | None = None, *, model: str = "fake-model", host: str = LOCAL_HOST,
                 port: int = 0, when_exhausted: Literal["error", "repeat_last"] = "error") -> None:
        if host not in (LOCAL_HOST, "localhost"):
            raise ValueError("the fake OpenAI server only listens on 127.0.0.1")
        self.model = model
        self.when_exhausted = when_exhausted
        self.requests: list[ChatRequest] = []
        self.other_requests: list[tuple[str, str]] = []  # (method, path) of everything else
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._script: Script = script if script is not None else agreeable
        self._pos = 0
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._server.block_on_close = False  # a slow reply must not hold up stop()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{LOCAL_HOST}:{self.port}/v1"

    def start(self) -> FakeOpenAI:
        if self._thread is None:
            # a short poll interval: stop() returns in milliseconds, which matters over a whole test run
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                            name="fake-openai", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_script(self, script: Script) -> None:
        with self._lock:
            self._script = script
            self._pos = 0

    # ----------------------------------------------------------------------------------- answering

    def _next(self, req: ChatRequest) -> FakeReply:
        with self._lock:
            script = self._script
            if callable(script):
                return _as_reply(script(req))
            if self._pos < len(script):
                item = script[self._pos]
                self._pos += 1
                return _as_reply(item)
            if self.when_exhausted == "repeat_last" and script:
                return _as_reply(script[-1])
        # 400 is not retried by clients: a test that runs past its script fails loudly, not slowly
        return error(400, f"fake script exhausted after {len(script)} replies (request {req.index})")

    def sleep(self, seconds: float) -> None:
        """Sleep in slices, so that stop() ends a slow reply."""
        end = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < end:
            time.sleep(min(0.02, max(0.0, end - time.monotonic())))


def _completion(fake: FakeOpenAI, req: ChatRequest, reply: FakeReply) -> dict[str, Any]:
    prompt = _tokens(req.all_text)
    content = reply.content
    calls: list[dict[str, Any]] = [
        {"id": c.id or f"call_{uuid.uuid4().hex[:12]}", "type": "function",
         "function": {"name": c.name,
                      "arguments": c.arguments if isinstance(c.arguments, str) else json.dumps(c.arguments)}}
        for c in reply.tool_calls
    ]
    completion = _tokens((content or "") + "".join(c["function"]["arguments"] for c in calls))
    p, q = reply.usage if reply.usage is not None else (prompt, completion)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    finish = reply.finish_reason or ("tool_calls" if calls else "stop")
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:16]}", "object": "chat.completion", "created": int(time.time()),
            "model": str(req.body.get("model") or fake.model),
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": p, "completion_tokens": q, "total_tokens": p + q}}


def _stream_chunks(fake: FakeOpenAI, req: ChatRequest, reply: FakeReply) -> Iterator[dict[str, Any]]:
    full = _completion(fake, req, reply)
    base = {"id": full["id"], "object": "chat.completion.chunk", "created": full["created"], "model": full["model"]}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    yield chunk({"role": "assistant", "content": ""})
    for word in re.findall(r"\S+\s*|\s+", reply.content or ""):
        yield chunk({"content": word})
    for i, c in enumerate(full["choices"][0]["message"].get("tool_calls") or []):
        yield chunk({"tool_calls": [{"index": i, **c}]})
    yield chunk({}, full["choices"][0]["finish_reason"])
    if (req.body.get("stream_options") or {}).get("include_usage"):
        yield {**base, "choices": [], "usage": full["usage"]}


def _embedding(text_: str, dim: int = 16) -> list[float]:
    digest = hashlib.sha256(text_.encode()).digest()
    vec = [(b - 127.5) / 127.5 for b in digest[:dim]]
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return [v / norm for v in vec]


def _handler_for(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            return  # quiet: tests read `fake.requests` instead

        def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj).encode())

        def do_GET(self) -> None:  # noqa: N802 - stdlib naming
            fake.other_requests.append(("GET", self.path))
            if self.path.rstrip("/").endswith("/v1/models"):
                self._json(200, {"object": "list", "data": [
                    {"id": fake.model, "object": "model", "created": 0, "owned_by": "opsmedic-fake"}]})
            else:
                self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

        def do_POST(self) -> None:  # noqa: N802 - stdlib naming
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                self._json(400, {"error": {"message": "request body is not JSON", "type": "invalid_request"}})
                return
            path = self.path.rstrip("/")
            if path.endswith("/embeddings"):
                fake.other_requests.append(("POST", self.path))
                inputs = body.get("input")
                items = inputs if isinstance(inputs, list) else [inputs]
                data = [{"object": "embedding", "index": i, "embedding": _embedding(str(t))}
                        for i, t in enumerate(items)]
                self._json(200, {"object": "list", "data": data, "model": body.get("model", fake.model),
                                 "usage": {"prompt_tokens": len(items), "total_tokens": len(items)}})
                return
            if not path.endswith("/chat/completions"):
                fake.other_requests.append(("POST", self.path))
                self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                return
            with fake._lock:
                req = ChatRequest(body=body, index=len(fake.requests))
                fake.requests.append(req)
            reply = fake._next(req)
            if reply.delay_s:
                fake.sleep(reply.delay_s)
                if fake._stop.is_set():
                    return
            try:
                if reply.raw is not None:
                    self._send(reply.status, reply.raw.encode(), "application/json")
                elif reply.status != 200 or reply.body is not None:
                    self._json(reply.status, reply.body or {"error": {"message": "error", "type": "server_error"}})
                elif req.stream:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Cache-Control", "no-cache")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for c in _stream_chunks(fake, req, reply):
                        self.wfile.write(f"data: {json.dumps(c)}\n\n".encode())
                        self.wfile.flush()
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                    self.close_connection = True
                else:
                    self._json(200, _completion(fake, req, reply))
            except (BrokenPipeError, ConnectionResetError):
                return  # the client gave up (its timeout): nothing to answer

    return Handler


# ------------------------------------------------------------------------------- ready-made scripts

_DATA_RE = re.compile(r'<data name="(?P<name>[a-z_]+)"[^>]*>\n?(?P<body>.*?)\n?</data>', re.S)


def data_blocks(message: str) -> dict[str, str]:
    """The delimited data blocks of a prompt (see agents.prompts), by name, still escaped."""
    return {m.group("name"): m.group("body") for m in _DATA_RE.finditer(message)}


def _unescape(s: str) -> str:
    return s.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def agreeable(req: ChatRequest) -> FakeReply:
    """A well-behaved stand-in for a model, for demos: it submits the rules engine's own diagnosis or plan
    (found in the prompt's `baseline` data block), and answers chat questions from the `facts` block."""
    blocks = data_blocks("\n".join(req.text_of("user")))
    for name in ("submit_diagnosis", "submit_plan"):
        if name in req.tool_names and "baseline" in blocks:
            try:
                return tool_call(name, json.loads(_unescape(blocks["baseline"])))
            except json.JSONDecodeError:
                break
    if req.json_schema is not None and "baseline" in blocks:
        return text(_unescape(blocks["baseline"]))
    facts = _unescape(blocks.get("facts", "")).strip()
    if facts:
        return text("From opsmedic's records: " + " ".join(facts.split()))
    return text("I can only answer from opsmedic's records, and none were given with this question.")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m fakes.fake_openai [--port N] [--script FILE.json]`: serve until Ctrl-C."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m fakes.fake_openai", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--model", default="fake-model")
    p.add_argument("--script", metavar="FILE", help="a JSON list of replies; default: the agreeable model")
    args = p.parse_args(argv)
    script: Script | None = None
    if args.script:
        with open(args.script, encoding="utf-8") as fh:
            script = json.load(fh)
    fake = FakeOpenAI(script, model=args.model, port=args.port, when_exhausted="repeat_last").start()
    print(f"fake OpenAI-compatible server on {fake.base_url} (model {fake.model}); Ctrl-C stops it", flush=True)
    print(f"  export OPSMEDIC_LLM_BASE_URL={fake.base_url} OPSMEDIC_LLM_MODEL={fake.model} OPENAI_API_KEY=fake",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
