"""The scriptable fake OpenAI-compatible server itself: models, embeddings, streaming, tool calls through
LangChain, scripted errors, and a script that runs out."""

from __future__ import annotations

import httpx
import pytest
from fakes.fake_openai import FakeOpenAI, error, text, tool_call


def test_models_and_embeddings() -> None:
    with FakeOpenAI([]) as fake:
        models = httpx.get(f"{fake.base_url}/models").json()
        assert models["data"][0]["id"] == "fake-model"
        emb = httpx.post(f"{fake.base_url}/embeddings", json={"model": "e", "input": ["a", "b", "a"]}).json()
        vecs = [d["embedding"] for d in emb["data"]]
        assert len(vecs) == 3 and vecs[0] == vecs[2] != vecs[1]


def test_langchain_streaming_and_tool_calls() -> None:
    from langchain_openai import ChatOpenAI

    with FakeOpenAI([text("one two three"), tool_call("pod_logs", {"pod": "p-0"})]) as fake:
        chat = ChatOpenAI(model=fake.model, base_url=fake.base_url, api_key="k", max_retries=0,  # type: ignore[arg-type]
                          stream_usage=True)
        chunks = list(chat.stream("hi"))
        assert "".join(str(c.content) for c in chunks) == "one two three"
        assert sum((c.usage_metadata or {}).get("output_tokens", 0) for c in chunks) > 0
        ai = chat.bind_tools([{"type": "function", "function": {"name": "pod_logs", "parameters": {
            "type": "object", "properties": {"pod": {"type": "string"}}}}}]).invoke("logs?")
        assert ai.tool_calls[0]["name"] == "pod_logs" and ai.tool_calls[0]["args"] == {"pod": "p-0"}
        assert fake.requests[0].stream and fake.requests[1].tool_names == ["pod_logs"]


def test_scripted_errors_and_exhaustion() -> None:
    with FakeOpenAI([error(503, "busy")]) as fake:
        r = httpx.post(f"{fake.base_url}/chat/completions", json={"messages": []})
        assert r.status_code == 503 and r.json()["error"]["message"] == "busy"
        r = httpx.post(f"{fake.base_url}/chat/completions", json={"messages": []})
        assert r.status_code == 400 and "script exhausted" in r.json()["error"]["message"]


def test_only_local() -> None:
    with pytest.raises(ValueError):
        FakeOpenAI([], host="0.0.0.0")
