"""Embedders: the bundled MiniLM model, and the OpenAI-compatible client against a local HTTP server."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import ConfigError, PermanentToolError, TransientToolError
from knowledge.embeddings import Embedder, MiniLMEmbedder, OpenAIEmbedder, default_embedder, make_embedder
from knowledge.index import RunbookIndex
from knowledge.runbooks import load_runbooks

DIM = 64


def _fake_vector(text: str) -> list[float]:
    """A deterministic bag-of-words vector: texts sharing words are close, like a (crude) embedding model."""
    vec = [0.0] * DIM
    for word in text.lower().split():
        vec[int(hashlib.md5(word.encode()).hexdigest(), 16) % DIM] += 1.0
    return vec


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(
            {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
        )
        mode = self.server.mode
        if mode == "500":
            self._send(500, {"error": "boom"})
        elif mode == "400":
            self._send(400, {"error": {"message": "unknown model"}})
        elif mode == "malformed":
            self._send(200, {"nope": []})
        else:
            data = [
                {"object": "embedding", "index": i, "embedding": _fake_vector(t)}
                for i, t in enumerate(body["input"])
            ]
            data.reverse()  # servers may answer out of order; the client must sort by index
            self._send(200, {"object": "list", "data": data, "model": body["model"]})

    def _send(self, status: int, payload: object) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture
def server() -> Iterator[Any]:
    srv: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.requests = []
    srv.mode = "ok"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv: Any) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/v1"


# -------------------------------------------------------------------------------------------- MiniLM


def test_minilm_vectors_are_normalised_and_semantic() -> None:
    emb = default_embedder()
    assert isinstance(emb, Embedder) and emb.name == "all-MiniLM-L6-v2-onnx-int8"
    v = emb.embed(
        [
            "the GPU has fallen off the PCIe bus",
            "GPU no longer visible on the PCI bus after an XID error",
            "fraud model accuracy dropped after the deploy",
        ]
    )
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2
    assert emb.embed([]).shape == (0, 384)


def test_minilm_batching_does_not_change_vectors() -> None:
    emb = default_embedder()
    texts = [
        "short",
        "a somewhat longer sentence about NVLink CRC errors climbing on GPU five",
        "node NotReady",
    ]
    together = emb.embed(texts, batch_size=16)
    one_by_one = np.vstack([emb.embed([t]) for t in texts])
    assert np.allclose(together, one_by_one, atol=1e-4)


def test_minilm_missing_model_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        MiniLMEmbedder(tmp_path / "missing.onnx").embed(["x"])


# ------------------------------------------------------------------------------------ OpenAI-compatible


def test_openai_embedder_against_local_server(server: Any) -> None:
    emb = OpenAIEmbedder(_url(server), "text-embedding-3-small", api_key="sk-test", batch_size=2)
    assert emb.name == "openai:text-embedding-3-small"
    v = emb.embed(["gpu fell off the bus", "model accuracy dropped", "gpu fell off"])
    assert v.shape == (3, DIM)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    expected = np.array(_fake_vector("gpu fell off"), dtype=np.float32)
    assert np.allclose(v[2], expected / np.linalg.norm(expected), atol=1e-6)  # order restored from `index`
    assert [r["path"] for r in server.requests] == ["/v1/embeddings", "/v1/embeddings"]  # batched by 2
    assert server.requests[0]["body"] == {
        "model": "text-embedding-3-small",
        "input": ["gpu fell off the bus", "model accuracy dropped"],
    }
    assert server.requests[0]["auth"] == "Bearer sk-test"
    emb.close()


@pytest.mark.parametrize(
    ("mode", "error"),
    [("500", TransientToolError), ("400", PermanentToolError), ("malformed", PermanentToolError)],
)
def test_openai_embedder_errors(server: Any, mode: str, error: type[Exception]) -> None:
    server.mode = mode
    with pytest.raises(error):
        OpenAIEmbedder(_url(server), "m").embed(["x"])


def test_openai_embedder_connection_refused_is_transient() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransientToolError):
        OpenAIEmbedder(f"http://127.0.0.1:{port}/v1", "m", timeout_s=2).embed(["x"])


def test_index_works_with_the_openai_embedder(server: Any, small_folder: Path) -> None:
    emb = make_embedder(_url(server), "m")
    assert isinstance(emb, OpenAIEmbedder)
    with RunbookIndex.open(":memory:", emb) as index:
        report = index.ensure_indexed(load_runbooks(small_folder).runbooks)
        assert report.rebuilt
        assert (
            index.search("GPU has fallen off the bus XID 79", top_k=1)[0].runbook.id
            == "gpu-xid79-fell-off-bus"
        )


def test_make_embedder_defaults_to_local_and_checks_model() -> None:
    assert make_embedder() is default_embedder()
    with pytest.raises(ConfigError):
        make_embedder("http://127.0.0.1:1/v1", None)
