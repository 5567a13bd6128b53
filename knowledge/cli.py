"""Plain functions behind ``opsmedic runbooks lint | index | search``.

Layer: engines (``knowledge``); ``opsmedic.cli`` parses the arguments and calls these. They print to the
streams they are given and *return* an exit code (0 ok, 1 problems found / nothing found, 2 bad input);
they never call ``sys.exit``. Everything heavy (qdrant_client, onnxruntime, tokenizers) is imported inside
the functions, so importing this module keeps ``opsmedic --help`` fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from core.errors import InputError, OpsmedicError

if TYPE_CHECKING:
    from knowledge.embeddings import Embedder
    from knowledge.index import RunbookIndex


def default_index_location(data_dir: str | Path | None = None) -> str:
    """Where the local Qdrant index lives unless settings name a server: ``<data_dir>/qdrant``.

    ``data_dir`` is opsmedic's data folder from settings (``.opsmedic`` by default).
    """
    return str(Path(data_dir if data_dir is not None else ".opsmedic") / "qdrant")


def _fail(exc: OpsmedicError, err: TextIO) -> int:
    print(f"error: {exc}", file=err)
    return 2 if isinstance(exc, InputError) else 1


def lint_command(
    folder: str | Path | None = None, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Validate every runbook, printing one ``file:line: message`` per problem.

    Exit code: 0 clean, 1 problems found, 2 the folder is missing.
    """
    from knowledge.runbooks import lint, load_runbooks, unreachable

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        problems = lint(folder)
        count = len(load_runbooks(folder).runbooks)
    except OpsmedicError as exc:
        return _fail(exc, err)
    for p in problems:
        print(str(p), file=out)
    where = str(folder) if folder is not None else "bundled runbooks"
    idle = unreachable(load_runbooks(folder).runbooks)
    if idle:  # a note, not a failure: these are still cited by retrieval
        print(f"note: {len(idle)} runbook(s) can drive no plan (no signature, named by no rule, not the primary "
              "picked for any of their causes): "
              + ", ".join(idle), file=out)
    if problems:
        print(f"{len(problems)} problem(s) in {where}; {count} runbook(s) valid", file=out)
        return 1
    print(f"{count} runbook(s) valid in {where}", file=out)
    return 0


def _open_index(
    location: str | None, folder: str | Path | None, embedder: Embedder | None, err: TextIO
) -> tuple[RunbookIndex, bool]:
    from knowledge.index import RunbookIndex
    from knowledge.runbooks import load_runbooks

    loaded = load_runbooks(folder)
    for p in loaded.problems:
        print(f"skipped: {p}", file=err)
    index = RunbookIndex.open(location or default_index_location(), embedder)
    report = index.ensure_indexed(loaded.runbooks)
    return index, report.rebuilt


def index_command(
    location: str | None = None,
    folder: str | Path | None = None,
    *,
    embedder: Embedder | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """(Re)build the index if the runbooks changed. Invalid runbooks are reported and skipped (exit 1)."""
    from knowledge.runbooks import load_runbooks

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        problems = load_runbooks(folder).problems
        index, rebuilt = _open_index(location, folder, embedder, err)
    except OpsmedicError as exc:
        return _fail(exc, err)
    try:
        state = "rebuilt" if rebuilt else "up to date"
        print(f"runbook index {state}: {len(index.runbooks)} runbook(s) at {index.location}", file=out)
    finally:
        index.close()
    return 1 if problems else 0


def search_command(
    query: str,
    *,
    top_k: int = 3,
    as_json: bool = False,
    location: str | None = None,
    root_cause: str | None = None,
    resource_kind: str | None = None,
    folder: str | Path | None = None,
    embedder: Embedder | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Print the best runbooks for ``query``; with ``as_json`` a JSON list of {id, title, root_causes, score}.

    Exit 0 with results, 1 when nothing matched, 2 on bad input (empty query, top_k < 1, unknown label).
    """
    from core.domain import ResourceKind, known_root_causes
    from knowledge.runbooks import load_runbooks

    out = out or sys.stdout
    err = err or sys.stderr
    if not query.strip():
        print("error: the search query is empty", file=err)
        return 2
    if top_k < 1:
        print("error: --top must be at least 1", file=err)
        return 2
    if root_cause is not None:
        try:
            load_runbooks(folder)  # the library's own labels are valid filters too
        except OpsmedicError as exc:
            return _fail(exc, err)
        if root_cause not in known_root_causes():
            print(f"error: unknown root cause {root_cause!r}; expected one of {', '.join(known_root_causes())}",
                  file=err)
            return 2
    if resource_kind is not None and resource_kind not in {k.value for k in ResourceKind}:
        print(f"error: unknown resource kind {resource_kind!r}", file=err)
        return 2
    try:
        index, _ = _open_index(location, folder, embedder, err)
        try:
            hits = index.search(query, top_k=top_k, root_cause=root_cause, resource_kind=resource_kind)
        finally:
            index.close()
    except OpsmedicError as exc:
        return _fail(exc, err)
    if as_json:
        rows = [
            {
                "id": h.runbook.id,
                "title": h.runbook.title,
                "root_causes": list(h.runbook.root_causes),
                "score": h.score,
            }
            for h in hits
        ]
        print(json.dumps(rows), file=out)
    else:
        if not hits:
            print("no runbook matched", file=out)
        for rank, h in enumerate(hits, start=1):
            causes = ", ".join(h.runbook.root_causes)
            print(f"{rank}. {h.runbook.id}  score={h.score:.3f}  [{causes}]\n   {h.runbook.title}", file=out)
    return 0 if hits else 1
