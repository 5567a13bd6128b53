"""One catalogue per action: every backend's handler table covers exactly the catalogue's actions, and the
catalogue is the only list of action names in the product packages.

Adding an action is meant to be: its entry in `core.actions` + one handler (or `Unsupported`) in each backend's
table + the runbook lines that use it. These tests hold that true: a backend table that misses the new action
fails at import (and here); a second list of names somewhere else fails the scan below.
"""

from __future__ import annotations

import ast
from pathlib import Path
from types import ModuleType

import pytest

from core.actions import ACTION_NAMES, ACTION_TOOLS, Unsupported, handler_table, supported
from core.domain import Action
from core.errors import PermanentToolError
from sandbox import cluster
from sandbox.cluster import Simulator
from tools import k8s_backend, mlflow_backend
from tools.sandbox_backend import SandboxBackend

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("core", "infra", "sandbox", "tools", "policies", "knowledge", "agents", "opsmedic")
# the backends and their one handler table each (a backend added later joins this list)
BACKENDS: dict[str, ModuleType] = {
    "sandbox/cluster.py": cluster,
    "tools/k8s_backend.py": k8s_backend,
    "tools/mlflow_backend.py": mlflow_backend,
}


@pytest.mark.parametrize("module", BACKENDS.values(), ids=list(BACKENDS))
def test_every_backend_table_covers_exactly_the_catalogue(module: ModuleType) -> None:
    table = module.HANDLERS
    assert tuple(table) == ACTION_NAMES == tuple(ACTION_TOOLS)
    for name, handler in table.items():
        assert isinstance(handler, Unsupported) or (callable(handler.do) and callable(handler.check)), name


def test_each_action_is_carried_out_somewhere_and_the_tables_say_where() -> None:
    assert supported(cluster.HANDLERS) == set(ACTION_NAMES)  # the simulator does everything
    assert k8s_backend.K8S_ACTIONS == supported(k8s_backend.HANDLERS) == {
        n for n, s in ACTION_TOOLS.items() if s.target_kind.value in ("node", "gpu", "pod", "workload")
    } | {"abort_rollout"}
    assert mlflow_backend.MODEL_ACTIONS == {"rollback_model", "retrain_model", "promote_model"}
    # an action no real backend takes is the pager's (`opsmedic.daemon.world`): notify and escalate only
    assert set(ACTION_NAMES) - k8s_backend.K8S_ACTIONS - mlflow_backend.MODEL_ACTIONS == {"notify", "escalate"}


def test_a_table_must_name_every_action_and_nothing_else() -> None:
    full = dict.fromkeys(ACTION_NAMES, Unsupported("no"))
    assert tuple(handler_table("full", full)) == ACTION_NAMES
    missing = {n: h for n, h in full.items() if n != "drain_node"}
    with pytest.raises(AssertionError, match=r"missing \['drain_node'\]"):
        handler_table("short", missing)
    with pytest.raises(AssertionError, match=r"not actions \['reboot_node'\]"):
        handler_table("long", {**full, "reboot_node": Unsupported("no")})


def test_an_unsupported_action_is_a_clear_typed_error() -> None:
    # the Kubernetes backend's table says where the action belongs, and `apply` refuses it in those words
    entry = k8s_backend.HANDLERS["rollback_model"]
    assert isinstance(entry, Unsupported) and "belong to other backends" in entry.reason
    backend = k8s_backend.KubernetesBackend.__new__(k8s_backend.KubernetesBackend)
    with pytest.raises(PermanentToolError, match="rollback_model@m: not a Kubernetes action"):
        backend.apply(Action(name="rollback_model", target="m"))


def test_the_simulator_dispatches_through_its_table() -> None:
    from sandbox.scenario import load_scenario

    sim = Simulator(load_scenario(ROOT / "sandbox" / "scenarios" / "xid79-fell-off-bus.yaml"))
    backend = SandboxBackend(sim)
    r = backend.execute(Action(name="cordon_node", target="node-1"), idempotency_key="k1")
    assert r.ok and r.changed and sim.nodes["node-1"].unschedulable
    assert backend.verify(Action(name="cordon_node", target="node-1")).ok
    r = backend.execute(Action(name="notify", target="node-1", params={"message": "hi"}), idempotency_key="k2")
    assert r.ok and sim.notifications[-1] == "notify node-1: hi"


# ------------------------------------------------------------------------------------ one list of names


def _name_collections(tree: ast.AST) -> list[tuple[int, set[str]]]:
    """Each literal list, tuple, set or dict (its keys) that names two or more actions, and the names."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            elts = list(node.elts)
        elif isinstance(node, ast.Dict):
            elts = [k for k in node.keys if k is not None]
        else:
            continue
        names = {e.value for e in elts if isinstance(e, ast.Constant) and e.value in ACTION_NAMES}
        if len(names) >= 2:
            found.append((node.lineno, names))
    return found


def test_the_catalogue_is_the_only_list_of_action_names() -> None:
    """No product module lists more than a handful of actions by name, except the catalogue itself and each
    backend's one handler table. A property of actions (what they target, how they are told) belongs in the
    catalogue; a group of them (`actions_on(kind)`) is read from it."""
    most = 5  # a local group (the model actions a console page shows) may name a few; a catalogue copy may not
    offenders: list[str] = []
    tables: dict[str, int] = {}
    for pkg in PRODUCT:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "core/actions.py":
                continue
            for line, names in _name_collections(ast.parse(path.read_text(encoding="utf-8"))):
                if rel in BACKENDS and names == set(ACTION_NAMES):
                    tables[rel] = tables.get(rel, 0) + 1
                elif len(names) > most:
                    offenders.append(f"{rel}:{line} names {len(names)} actions")
    assert offenders == []
    assert tables == dict.fromkeys(BACKENDS, 1)  # one table per backend, and only there


def test_no_backend_dispatches_by_building_a_method_name() -> None:
    for pkg in PRODUCT:
        for path in (ROOT / pkg).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert 'f"_do_' not in text and 'f"_check_' not in text, path
