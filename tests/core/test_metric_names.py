"""`core.metric_names` is the one place a metric name is spelled: the exporter writes its families, the
Prometheus source reads them, and no other product module writes a name of its own."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from core import metric_names as mn
from sandbox.cluster import Simulator
from sandbox.exporter import render
from sandbox.scenario import load_scenario
from tools.prometheus_source import PrometheusSource, exposition_samples

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("core", "infra", "sandbox", "tools", "policies", "knowledge", "agents", "opsmedic")
HOME = REPO / "core" / "metric_names.py"
# a whole metric name inside a string: the declared ones, and any DCGM field (a name the catalogue lacks is
# one that drifted)
NAMES = re.compile(r"(?<![A-Za-z0-9_])(?:" + "|".join(map(re.escape, sorted(mn.ALL_NAMES, key=len, reverse=True)))
                   + r"|DCGM_(?:FI|EXP)_[A-Z0-9_]+)(?![A-Za-z0-9_])")


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def spelled_names(path: Path) -> list[str]:
    """`file:line: name` for each metric name written in a string of `path` (docstrings excepted: prose)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = _docstrings(tree)
    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    return [f"{where}:{node.lineno}: {m.group(0)}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
            for m in NAMES.finditer(node.value)]


def test_no_product_module_spells_a_metric_name() -> None:
    found = [hit for pkg in PRODUCT for path in sorted((REPO / pkg).rglob("*.py")) if path != HOME
             for hit in spelled_names(path)]
    assert found == []


def test_the_check_sees_a_spelled_name(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text('"""Docstrings may say DCGM_FI_DEV_GPU_TEMP."""\nQ = "rate(DCGM_FI_DEV_GPU_TEMP[1m])"\n'
                       'K = "kube_pod_info"\nN = "kube_pod_info_extra"\n', encoding="utf-8")
    assert [h.rsplit(": ", 1)[1] for h in spelled_names(planted)] == ["DCGM_FI_DEV_GPU_TEMP", "kube_pod_info"]


def test_names_are_unique_and_counters_end_in_total() -> None:
    assert len(set(mn.ALL_NAMES)) == len(mn.ALL_NAMES)
    for f in mn.ALL_METRICS:
        assert f.name.endswith("_total") or not f.counter, f.name
    assert all(f.gpu_field for f in mn.DCGM_FIELDS)


def test_the_exporter_writes_every_family_the_source_reads(examples_dir: Path) -> None:
    sim = Simulator(load_scenario(examples_dir / "xid79-fell-off-bus.yaml"))
    sim.step()
    text = render(sim.snapshot())
    families = re.findall(r"^# TYPE (\S+) (\S+)$", text.decode(), flags=re.MULTILINE)
    assert sorted(families) == sorted((f.name, "counter" if f.counter else "gauge") for f in mn.ALL_METRICS)
    assert {s.name for s in exposition_samples(text)} <= set(mn.ALL_NAMES)
    # the reader's one query asks for every declared name
    query = PrometheusSource("http://127.0.0.1:9").promql()  # builds its client; queries nothing
    assert query.split('"')[1].split("|") == list(mn.ALL_NAMES)
