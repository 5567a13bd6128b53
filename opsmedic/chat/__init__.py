"""The chat interface to the ops agent: terminal (`opsmedic chat`), HTTP (`POST /api/chat`) and Slack.

Layer: interfaces (below `opsmedic.cli` and the daemon, which serve it; beside the console). It may import
`opsmedic.evaluation`, `agents`, `policies`, `knowledge` and `tools`; nothing imports it but the CLI and the
daemon.

- `opsmedic.chat.router`   what a question means: local sentence embeddings (MiniLM, int8 ONNX) against the
                           labelled examples in `data/intents.yaml`, follow-ups, clarifying questions
- `opsmedic.chat.entities` nodes, GPUs, pods, models, incidents, approvals, XIDs, actions, time windows
- `opsmedic.chat.intents`  the deterministic parser: requests to act ("drain node-3"), approvals, help
- `opsmedic.chat.records`  opsmedic's real state, read back: the audit log, approvals, checkpoints
- `opsmedic.chat.answers`  answers from that state, citing audit entries and policy rules
- `opsmedic.chat.oncall`   fleet health, activity in a window, who decided, refusals, evidence, pages,
                           what an action would do (the governor's explanation), clarifying questions
- `opsmedic.chat.bench`    `opsmedic bench --only chat`
- `opsmedic.chat.actions`  requests to act, decided by the real PolicyEngine (the governor), never run directly
- `opsmedic.chat.roles`    who may ask (viewers) and who may request actions (operators)
- `opsmedic.chat.store`    the conversation store shared by terminal, HTTP and Slack (table `opsmedic_chat`)
- `opsmedic.chat.service`  `answer(question, user, ctx)`: the one entry point all three use
- `opsmedic.chat.context`  `ChatContext`: what a turn may read and use (database, policy, telemetry, backend)
- `opsmedic.chat.repl`     the terminal REPL; `opsmedic.chat.cli`: `add_parser(sub)` and `cmd_chat(args)`
- `opsmedic.chat.slack`    Slack mentions and DMs: `handle_event(event, ctx, post)` for the daemon

Importing this package is cheap: the names below load their modules on first use, so that building the CLI
parser does not import LangChain, LangGraph or the policy engine.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "ChatContext": "opsmedic.chat.service",
    "ChatReply": "opsmedic.chat.service",
    "answer": "opsmedic.chat.service",
    "add_parser": "opsmedic.chat.cli",
    "cmd_chat": "opsmedic.chat.cli",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'opsmedic.chat' has no attribute {name!r}")
    return getattr(import_module(module), name)
