"""Runbook knowledge: loading and linting runbooks, local embeddings, the Qdrant index, hybrid retrieval.

Layer: engines (next to ``policies`` and ``tools``). This package imports only ``core.domain``,
``core.errors`` (and, through its callers, settings values passed in as plain arguments); the agents
and the CLI import it, never the other way round.

Heavy third-party modules (qdrant_client, onnxruntime, tokenizers) are imported lazily inside functions so
that importing ``knowledge`` — and therefore ``opsmedic --help`` — stays fast.
"""

from __future__ import annotations

from knowledge.runbooks import (
    Runbook,
    RunbookLoad,
    RunbookProblem,
    RunbookStep,
    lint,
    load_runbook,
    load_runbooks,
)

__all__ = [
    "Runbook",
    "RunbookLoad",
    "RunbookProblem",
    "RunbookStep",
    "lint",
    "load_runbook",
    "load_runbooks",
]
