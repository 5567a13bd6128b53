"""`opsmedic chat [--ask TEXT] [--db URL] [--as USER] [--no-llm] [--json]`: the CLI entry of the chat.

Layer: interfaces. `opsmedic.cli` calls `add_parser(sub)` while it builds its parser; this module imports
only argparse-level things at import time, so `opsmedic --help` stays fast, and the chat's own imports
(policies, and LangChain only when an LLM is configured) happen inside `cmd_chat`.

The database is the configured one (`--db`, else `OPSMEDIC_DATABASE_URL` / opsmedic.toml, else
`.opsmedic/opsmedic.db`): a SQLite file, or Postgres for a `postgresql://` URL.

Exit codes: 0 answered (a refusal by the policy is an answer too), 1 the chat refused the user or the
request was invalid (or, through `opsmedic.cli`, the database could not be used), 2 bad input (no SQLite
database there).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

USER_VAR = "OPSMEDIC_CHAT_USER"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `chat` subcommand to `opsmedic`'s subparsers (`sub = parser.add_subparsers(...)`)."""
    c: argparse.ArgumentParser = subparsers.add_parser(
        "chat", help="talk to the ops agent: incidents, why an action was taken, health, approvals, runbooks",
        description="Ask about incidents, actions, health, approvals and runbooks, from opsmedic's own records; "
                    "operators may ask it to act, which goes through the governor like the daemon's actions.")
    c.add_argument("--ask", metavar="TEXT", help="answer this one question and exit (for scripts)")
    c.add_argument("--db", metavar="URL", help="the opsmedic database: a SQLite path or sqlite:///path, or "
                                               "postgresql://user:pass@host:port/db (default: the configured "
                                               "one, .opsmedic/opsmedic.db)")
    c.add_argument("--as", dest="as_user", metavar="USER",
                   help=f"who is asking (default: ${USER_VAR} or your login name)")
    c.add_argument("--no-llm", action="store_true", help="answer deterministically even if an LLM is configured")
    c.add_argument("--json", action="store_true", help="with --ask: print the reply as one JSON object")
    c.set_defaults(func=cmd_chat)
    return c


def cmd_chat(args: argparse.Namespace) -> int:
    from core.errors import InputError
    from core.settings import load_settings
    from opsmedic.chat.service import ChatContext, answer

    settings = load_settings(database_url=args.db) if args.db else load_settings()
    db = settings.database().location  # the SQLite file's Path, or a postgresql:// URL
    if isinstance(db, Path) and not db.exists():
        raise InputError("no opsmedic database here: run `opsmedic demo` first, or point --db at the daemon's "
                         "database", str(db))
    from core.settings import load_settings

    user = args.as_user or load_settings().chat_user or _login()
    ctx = ChatContext.from_settings(settings, db_path=db, with_llm=not args.no_llm, channel="cli")
    if args.ask is None:
        from opsmedic.chat.repl import run_repl

        return run_repl(ctx, user, history_file=settings.data_dir / "chat_history")
    streaming = ctx.llm is not None and not args.json

    def on_token(tok: str) -> None:
        sys.stdout.write(tok)
        sys.stdout.flush()

    reply = answer(args.ask, user, ctx, on_token=on_token if streaming else None)
    if args.json:
        print(json.dumps(reply.as_dict(), default=str), flush=True)
    elif reply.streamed:
        print(flush=True)
    else:
        print(reply.text, flush=True)
    return 1 if reply.status in ("refused", "invalid") else 0


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "local"
