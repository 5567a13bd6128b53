"""The chat in Slack: app mentions and direct messages, answered by the same `answer()` as everywhere.

Layer: interfaces. The daemon owns Slack's plumbing (signature checks, Bolt, the Web API client); it hands
each `app_mention` or direct-message event here, with a `post(channel, thread_ts, text)` callable:

    from opsmedic.chat.slack import handle_event
    handle_event(event, service.chat_context("slack"),
                 lambda ch, ts, text: client.chat_postMessage(channel=ch, thread_ts=ts, text=text))

The Slack user id is the identity (roles come from `OPSMEDIC_CHAT_OPERATORS` / `OPSMEDIC_CHAT_VIEWERS`, as
Slack ids); each thread is one conversation in the shared store. Messages from bots (this one included)
and message edits are ignored, so the bot never answers itself. Replies are escaped for Slack's mrkdwn:
an answer that quotes a pod log cannot ping `@channel` or forge a link.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from opsmedic.chat.service import ChatContext, ChatReply, answer

Post = Callable[[str, str | None, str], Any]
MAX_SLACK_TEXT = 3900  # Slack truncates a message's text at 4000 characters

_MENTION = re.compile(r"<@[A-Z0-9]+(?:\|[^>]*)?>")


def escape_mrkdwn(text: str) -> str:
    """Slack's three control characters, escaped: no <!channel>, <@U..> or <http://...|forged> links."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def question_of(event: Mapping[str, Any]) -> str:
    """The text of a mention or DM without the bot's own @-mention."""
    return " ".join(_MENTION.sub(" ", str(event.get("text") or "")).split())


def is_for_us(event: Mapping[str, Any]) -> bool:
    """A user's mention, or a user's direct message; never a bot's message, an edit or a join notice."""
    if event.get("bot_id") or event.get("subtype") or not event.get("user"):
        return False
    kind = event.get("type")
    return kind == "app_mention" or (kind == "message" and event.get("channel_type") == "im")


def handle_event(event: Mapping[str, Any], ctx: ChatContext, post: Post) -> ChatReply | None:
    """Answer one Slack event in its thread; None when the event is not a question for the bot."""
    if not is_for_us(event):
        return None
    question = question_of(event)
    channel = str(event.get("channel") or "")
    thread = str(event.get("thread_ts") or event.get("ts") or "") or None
    if not question:
        question = "help"
    conv = f"slack:{channel}:{thread or 'dm'}"
    reply = answer(question, str(event["user"]), replace(ctx, channel="slack", conversation=conv))
    text = escape_mrkdwn(reply.text)
    if len(text) > MAX_SLACK_TEXT:
        text = text[: MAX_SLACK_TEXT - 40] + "\n… (cut; ask about one thing at a time)"
    post(channel, thread, text)
    return reply
