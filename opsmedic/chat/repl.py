"""The terminal chat: `opsmedic chat`.

Layer: interfaces. A read-eval-print loop over `opsmedic.chat.service.answer`, with line editing and a
history file through `readline` (when the platform has it), replies streamed token by token when an LLM is
configured, and Ctrl-C that never loses the session: at the prompt it clears the line, during a reply it
stops the reply. Ctrl-D or `exit` leaves.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import textwrap
from pathlib import Path
from typing import TextIO

from core.errors import OpsmedicError
from opsmedic.chat.service import ChatContext, answer

PROMPT = "you> "
BOT = "opsmedic> "
EXIT_WORDS = frozenset({"exit", "quit", "bye", ":q", "/exit", "/quit"})


def _readline(history_file: Path | None) -> None:
    """Arrow keys and a persistent history, when readline exists (not on every platform)."""
    try:
        import readline
    except ImportError:
        return
    readline.set_history_length(1000)
    if history_file is None:
        return
    with contextlib.suppress(OSError):
        history_file.parent.mkdir(parents=True, exist_ok=True)
        if history_file.exists():
            readline.read_history_file(str(history_file))
    import atexit

    def save() -> None:
        with contextlib.suppress(OSError):
            readline.write_history_file(str(history_file))

    atexit.register(save)


def wrap(text: str, width: int | None = None, *, first_offset: int = 0) -> str:
    """Fit a reply to the terminal: long lines wrap, list items and indented lines keep their indent.
    `first_offset`: columns already taken on the first line (by the "opsmedic> " prompt)."""
    width = width or max(40, shutil.get_terminal_size((100, 24)).columns - 1)
    out: list[str] = []
    for i, line in enumerate(text.splitlines() or [""]):
        room = width - (first_offset if i == 0 else 0)
        if len(line) <= room:
            out.append(line)
            continue
        stripped = line.lstrip(" ")
        indent = " " * (len(line) - len(stripped))
        hang = indent + ("  " if stripped.startswith("- ") else "   " if stripped[:2].rstrip(".").isdigit() else "")
        lines = textwrap.wrap(line, width=room, break_on_hyphens=False, break_long_words=False)
        rest = textwrap.wrap(" ".join(lines[1:]), width=width, initial_indent=hang, subsequent_indent=hang,
                             break_on_hyphens=False, break_long_words=False) if len(lines) > 1 else []
        out.extend(lines[:1] + rest)
    return "\n".join(out)


class StreamWriter:
    """Writes a streamed reply as it comes, word-wrapped: a word that would cross the edge starts a line."""

    def __init__(self, out: TextIO, col: int = 0, width: int | None = None) -> None:
        self.out = out
        self.col = col
        self.width = width or max(40, shutil.get_terminal_size((100, 24)).columns - 1)

    def __call__(self, tok: str) -> None:
        for piece in re.findall(r"\S+|\s+", tok):
            if "\n" in piece:
                self.out.write(piece)
                self.col = len(piece) - piece.rfind("\n") - 1
                continue
            if not piece.isspace() and self.col + len(piece) > self.width and self.col > 0:
                self.out.write("\n")
                self.col = 0
            if piece.isspace() and self.col == 0:
                continue
            self.out.write(piece)
            self.col += len(piece)
        self.out.flush()


def banner(ctx: ChatContext, user: str) -> str:
    from opsmedic.chat.records import Records

    with Records(ctx.db_path) as records:
        incidents = records.incidents()
        open_n = sum(1 for v in incidents if not v.closed)
        pending = len(records.pending_approvals())
        entries = len(records.entries())
        where = records.path  # a Postgres URL without its password
    role = ctx.roles.role_of(user)
    llm = f"LLM {ctx.llm.model}" if ctx.llm is not None else "no LLM (deterministic answers)"
    return (f"opsmedic chat - {where}: {entries} audit entries, {len(incidents)} incident(s), {open_n} open, "
            f"{pending} approval(s) pending.\nYou are {user} ({role}); {llm}. Type 'help' for examples, "
            f"Ctrl-D or 'exit' to leave.")


def run_repl(ctx: ChatContext, user: str, *, history_file: Path | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    _readline(history_file)
    print(wrap(banner(ctx, user)), file=out, flush=True)
    while True:
        try:
            line = input(PROMPT)
        except EOFError:
            print(file=out, flush=True)
            return 0
        except KeyboardInterrupt:
            print("\n(Ctrl-C: line cleared; Ctrl-D or 'exit' leaves)", file=out, flush=True)
            continue
        text = line.strip()
        if not text:
            continue
        if text.lower() in EXIT_WORDS:
            return 0
        print(BOT, end="", file=out, flush=True)
        on_token = StreamWriter(out, len(BOT))
        try:
            reply = answer(text, user, ctx, on_token=on_token if ctx.llm is not None else None)
        except KeyboardInterrupt:
            print("\n(interrupted)", file=out, flush=True)
            continue
        except OpsmedicError as exc:
            print(f"error: {exc}", file=out, flush=True)
            continue
        if reply.streamed:
            print(file=out, flush=True)
        else:
            # the first line shares the terminal row with the "opsmedic> " prompt
            print(wrap(reply.text, first_offset=len(BOT)), file=out, flush=True)
        if reply.interrupted and reply.streamed:
            print("(interrupted)", file=out, flush=True)
