"""The chat in Slack: mentions and DMs answered in their thread, with the Slack user id as the identity;
bot messages ignored; replies escaped so that quoted text cannot ping or forge links."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opsmedic.chat.roles import Roles
from opsmedic.chat.service import ChatContext
from opsmedic.chat.slack import escape_mrkdwn, handle_event
from opsmedic.chat.store import ConversationStore
from policies.audit import AuditLog


def test_mention_is_answered_in_its_thread(xid79_db: Path) -> None:
    posted: list[tuple[str, str | None, str]] = []
    ctx = ChatContext(db_path=xid79_db, roles=Roles(viewers=frozenset({"U1"})))
    event = {"type": "app_mention", "user": "U1", "channel": "C9", "ts": "171.5",
             "text": "<@UBOT> why is node-1 cordoned?"}
    reply = handle_event(event, ctx, lambda ch, ts, text: posted.append((ch, ts, text)))
    assert reply is not None and reply.intent == "why"
    assert posted and posted[0][:2] == ("C9", "171.5") and "rule default.allow" in posted[0][2]
    with AuditLog(xid79_db) as log:
        last = log.entries()[-1]
    assert last.payload["user"] == "U1" and last.payload["channel"] == "slack"
    store = ConversationStore(xid79_db)
    assert store.conversations()[0] == "slack:C9:171.5"
    store.close()


def test_direct_messages_and_roles(xid79_db: Path) -> None:
    posted: list[Any] = []
    ctx = ChatContext(db_path=xid79_db, roles=Roles(viewers=frozenset({"U1"})))
    dm = {"type": "message", "channel_type": "im", "user": "U2", "channel": "D1", "ts": "1.0", "text": "drain node-3"}
    reply = handle_event(dm, ctx, lambda *a: posted.append(a))
    assert reply is not None and reply.status == "refused" and "not allowed" in posted[0][2]


def test_bots_edits_and_channel_chatter_are_ignored(xid79_db: Path) -> None:
    ctx = ChatContext(db_path=xid79_db, roles=Roles())
    posted: list[Any] = []
    for event in ({"type": "app_mention", "bot_id": "B1", "user": "U1", "text": "hi"},
                  {"type": "message", "subtype": "message_changed", "channel_type": "im", "user": "U1"},
                  {"type": "message", "channel_type": "channel", "user": "U1", "text": "status of node-1"}):
        assert handle_event(event, ctx, lambda *a: posted.append(a)) is None
    assert posted == []


def test_replies_cannot_ping_or_forge_links() -> None:
    assert escape_mrkdwn("<!channel> see <http://evil|docs> & more") == \
        "&lt;!channel&gt; see &lt;http://evil|docs&gt; &amp; more"
