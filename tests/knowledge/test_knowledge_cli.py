"""The functions behind `opsmedic runbooks index|search`: output formats and exit codes."""

from __future__ import annotations

import io
import json
from pathlib import Path

from knowledge.cli import default_index_location, index_command, search_command


def test_index_then_search_json(small_folder: Path, tmp_path: Path) -> None:
    store = str(tmp_path / "qdrant")
    out, err = io.StringIO(), io.StringIO()
    assert index_command(store, small_folder, out=out, err=err) == 0
    assert "rebuilt: 3 runbook(s)" in out.getvalue()
    out = io.StringIO()
    assert index_command(store, small_folder, out=out, err=err) == 0
    assert "up to date" in out.getvalue()

    out = io.StringIO()
    code = search_command(
        "XID 79 on node-3 gpu 5, GPU has fallen off the bus",
        as_json=True,
        top_k=2,
        location=store,
        folder=small_folder,
        out=out,
        err=err,
    )
    assert code == 0
    rows = json.loads(out.getvalue())
    assert len(rows) == 2
    assert set(rows[0]) == {"id", "title", "root_causes", "score"}
    assert rows[0]["id"] == "gpu-xid79-fell-off-bus" and rows[0]["root_causes"] == ["gpu_fell_off_bus"]
    assert rows[0]["score"] >= rows[1]["score"]


def test_search_text_output_and_filters(small_folder: Path, tmp_path: Path) -> None:
    store = str(tmp_path / "qdrant")
    out, err = io.StringIO(), io.StringIO()
    code = search_command(
        "accuracy dropped after deploy",
        location=store,
        folder=small_folder,
        resource_kind="model",
        out=out,
        err=err,
    )
    assert code == 0
    assert out.getvalue().startswith("1. model-quality-regression")


def test_search_bad_input_exit_2(tmp_path: Path) -> None:
    err = io.StringIO()
    assert search_command("  ", err=err) == 2
    assert search_command("x", top_k=0, err=err) == 2
    assert search_command("x", root_cause="cosmic_rays", err=err) == 2
    assert search_command("x", resource_kind="toaster", err=err) == 2
    assert "cosmic_rays" in err.getvalue()


def test_index_reports_skipped_runbooks(small_folder: Path, tmp_path: Path) -> None:
    bad = small_folder / "broken.md"
    bad.write_text("---\nid: broken\n---\nbody\n")
    out, err = io.StringIO(), io.StringIO()
    assert index_command(str(tmp_path / "q"), small_folder, out=out, err=err) == 1
    assert f"skipped: {bad}:1:" in err.getvalue()
    assert "3 runbook(s)" in out.getvalue()


def test_default_location() -> None:
    assert default_index_location() == str(Path(".opsmedic") / "qdrant")
    assert default_index_location("/var/lib/opsmedic") == "/var/lib/opsmedic/qdrant"
