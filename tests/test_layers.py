"""The layers hold: pyproject's import-linter contracts cover every module, keep on this tree, and break on a
planted upward import.

Each planted case copies the product's packages to a temporary folder, adds one import to one file, and runs
`lint-imports` there on the one contract it must break: a contract that stays "kept" with an import from
policies into the daemon, or from the core into the agents, protects nothing. The clean copy is checked too,
so that a planted failure is the plant's doing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
LINTER: dict[str, Any] = PYPROJECT["tool"]["importlinter"]
CONTRACTS: dict[str, dict[str, Any]] = {c["id"]: c for c in LINTER["contracts"]}
ROOTS: list[str] = LINTER["root_packages"]
# What the core may take from outside the project and the standard library.
CORE_THIRD_PARTY = {"pydantic", "pydantic_settings", "yaml"}


def _layer_names(contract: dict[str, Any]) -> list[str]:
    return [name.strip() for layer in contract["layers"] for name in layer.replace(":", "|").split("|")]


def _copy_product(dest: Path) -> Path:
    """The root packages' Python files and pyproject.toml: all that `lint-imports` reads."""
    def ignore(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n == "__pycache__" or (Path(folder, n).is_file() and not n.endswith(".py"))]

    for root in ROOTS:
        shutil.copytree(REPO / root, dest / root, ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _lint(tree: Path, contract: str | None = None) -> subprocess.CompletedProcess[str]:
    args = ["--no-cache", *(["--contract", contract] if contract else [])]
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the copy, not the installed tree, is what grimp reads
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=tree, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def _plant(tree: Path, file: str, line: str) -> None:
    path = tree / file
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(f"\n{line}  # planted by tests/test_layers.py\n")


@pytest.fixture(scope="module")
def clean_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy_product(tmp_path_factory.mktemp("clean"))


def test_every_contract_is_kept_on_the_clean_tree(clean_copy: Path) -> None:
    run = _lint(clean_copy)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in run.stdout


PLANTS = [
    # an engine reaching up into an interface (the hole the old contracts had)
    ("layers", "policies/engine.py", "import opsmedic.daemon.config"),
    ("layers", "policies/engine.py", "import opsmedic.console.auth"),
    # the vocabulary importing what it describes
    ("layers", "core/domain.py", "import agents"),
    ("layers", "infra/db.py", "import policies.audit"),
    ("layers", "tools/ledger.py", "import policies.model"),  # engines and adapters are independent
    ("layers", "sandbox/cluster.py", "from tools import backend"),
    # inside the interfaces: nothing below the CLI imports it, the daemon is above what it serves
    ("interfaces", "opsmedic/bench.py", "from opsmedic import cli"),
    ("interfaces", "opsmedic/evaluation.py", "import opsmedic.daemon.service"),
    ("interfaces", "opsmedic/chat/records.py", "import opsmedic.console.views"),
    ("interfaces", "opsmedic/notes.py", "import json"),  # a new module the contract does not name
    # the sandbox is reached only through its adapters
    ("sandbox-adapters", "tools/k8s_backend.py", "import sandbox.cluster"),
    ("sandbox-adapters", "tools/drift.py", "from sandbox import model_data"),
    ("sandbox-adapters", "agents/graph.py", "import sandbox.scenario"),
    # the core does no I/O
    ("core-pure", "core/domain.py", "import httpx"),
    ("core-pure", "core/settings.py", "import sqlite3"),
    # files never import each other in a loop
    ("acyclic", "agents/corroboration.py", "from agents import diagnostician"),
    ("acyclic", "opsmedic/chat/actions.py", "import opsmedic.chat.service"),
]


@pytest.mark.parametrize(("contract", "file", "line"), PLANTS, ids=[f"{c}:{f}:{ln}" for c, f, ln in PLANTS])
def test_a_planted_import_breaks_its_contract(tmp_path: Path, contract: str, file: str, line: str) -> None:
    tree = _copy_product(tmp_path)
    _plant(tree, file, line)
    run = _lint(tree, contract)
    assert run.returncode != 0, f"{contract} stayed kept with `{line}` in {file}:\n{run.stdout}"
    assert "0 kept, 1 broken." in run.stdout, run.stdout + run.stderr


def test_every_product_package_stands_in_a_layer() -> None:
    on_disk = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    shipped = {pattern.rstrip("*") for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert on_disk == shipped == set(ROOTS)
    layered = _layer_names(CONTRACTS["layers"])
    assert sorted(layered) == sorted(ROOTS), "each root package stands in exactly one layer"


def test_every_interface_module_stands_in_a_layer() -> None:
    contract = CONTRACTS["interfaces"]
    assert contract["containers"] == ["opsmedic"] and contract["exhaustive"] is True
    children = {p.stem for p in (REPO / "opsmedic").glob("*.py") if p.stem != "__init__"}
    children |= {p.parent.name for p in (REPO / "opsmedic").glob("*/__init__.py")}
    layered = _layer_names(contract)
    assert sorted(layered) == sorted(children)


def test_the_core_takes_only_pydantic_and_yaml_from_outside() -> None:
    graph = grimp.build_graph("core", include_external_packages=True)
    ours = {m for m in graph.modules if m == "core" or m.startswith("core.")}
    imported = {i.split(".")[0] for m in ours for i in graph.find_modules_directly_imported_by(m)}
    third_party = {name for name in imported - {"core"} if name not in sys.stdlib_module_names}
    assert third_party <= CORE_THIRD_PARTY, third_party - CORE_THIRD_PARTY
