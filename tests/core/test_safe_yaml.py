"""core.safe_yaml: alias bombs, deep nesting and huge texts are refused before anything walks them,
by every YAML loader opsmedic has (policy, scenario, runbook front-matter, retrieval evaluation set), with
an error naming the file, and `opsmedic policy check` / `opsmedic eval` exit 2 on a bomb."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.errors import InputError, PolicyError, RunbookError, ScenarioError
from core.safe_yaml import MAX_DEPTH, MAX_NODES, YamlLimitError, compose_and_load, safe_load
from opsmedic.cli import main


def bomb(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs": level k is a list of `width` aliases of level k-1 (width^levels leaves)."""
    names = "abcdefghijklmnopqrstuvwxyz"
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['lol'] * width)}]"]
    for k in range(1, levels):
        lines.append(f"{names[k]}: &{names[k]} [{', '.join(['*' + names[k - 1]] * width)}]")
    return "\n".join(lines) + "\n"


def test_a_9_level_bomb_is_refused() -> None:
    with pytest.raises(YamlLimitError, match="alias bomb") as exc:
        safe_load(bomb())
    assert isinstance(exc.value, yaml.YAMLError) and exc.value.problem_mark is not None


def test_ordinary_yaml_and_modest_aliases_still_load() -> None:
    text = "base: &b {x: 1, y: [1, 2]}\nother:\n  <<: *b\n  y: [3]\nlist: [*b, *b]\n"
    node, data = compose_and_load(text)
    assert isinstance(node, yaml.MappingNode)
    assert data == {"base": {"x": 1, "y": [1, 2]}, "other": {"x": 1, "y": [3]},
                    "list": [{"x": 1, "y": [1, 2]}, {"x": 1, "y": [1, 2]}]}
    assert safe_load("") is None and safe_load("- 1\n- 2\n") == [1, 2]
    assert len(safe_load(bomb(levels=4, width=9))["d"]) == 9  # 9^4 = 6,561 leaves: within the limit
    assert 9 ** 6 > MAX_NODES  # while 6 levels of 9 are over it
    with pytest.raises(YamlLimitError):
        safe_load(bomb(levels=6, width=9))


@pytest.mark.parametrize("text", [
    "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5),  # plain nesting
    # nesting built through aliases: each anchor is 10 deep and holds the previous one
    "\n".join([f"a0: &a0 {'[' * 10}1{']' * 10}"]
              + [f"a{k}: &a{k} {'[' * 10}*a{k - 1}{']' * 10}" for k in range(1, 10)]),
    "a: &a [*a]",  # recursive
    "x: " + "y" * (3 * 1024 * 1024),  # huge
])
def test_deep_recursive_or_huge_yaml_is_refused(text: str) -> None:
    with pytest.raises(yaml.YAMLError):
        safe_load(text)


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _policy(p: Path) -> Any:
    from policies import load_policy

    return load_policy(p)


def _scenario(p: Path) -> Any:
    from sandbox.scenario import load_scenario

    return load_scenario(p)


def _runbook(p: Path) -> Any:
    from knowledge.runbooks import load_runbook

    return load_runbook(p)


def _eval_set(p: Path) -> Any:
    from knowledge.bench import load_eval_set

    return load_eval_set(p)


LOADERS: dict[str, tuple[Callable[[Path], Any], type[InputError], Callable[[str], str]]] = {
    "policy": (_policy, PolicyError, lambda b: b),
    "scenario": (_scenario, ScenarioError, lambda b: b),
    "runbook": (_runbook, RunbookError, lambda b: f"---\n{b}---\n\n# Body\n\ntext\n"),
    "eval set": (_eval_set, RunbookError, lambda b: b),
}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_every_loader_refuses_a_bomb_naming_the_file(tmp_path: Path, loader: str) -> None:
    load, error, wrap = LOADERS[loader]
    p = write(tmp_path, "bomb.yaml" if loader != "runbook" else "bomb.md", wrap(bomb()))
    with pytest.raises(error, match="alias bomb") as exc:
        load(p)
    assert str(p) in str(exc.value)


@pytest.mark.parametrize("command", [["policy", "check"], ["eval"]])
def test_cli_exits_2_on_a_bomb(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    p = write(tmp_path, "bomb.yaml", bomb())
    assert main([*command, str(p)]) == 2
    err = capsys.readouterr().err
    assert str(p) in err and "alias bomb" in err
