"""YAML loading with limits: the one loader for every file opsmedic reads (policies, scenarios, runbook
front-matter, evaluation sets).

Where this sits: the bottom layer, beside `core.domain`, `core.errors` and `core.settings`;
it imports only PyYAML. Callers translate its errors into their own `InputError` subclass naming the file.

`yaml.safe_load` constructs only plain data, but it still expands nothing lazily for the code that walks
the result: a 9-level alias bomb ("billion laughs") is a few hundred bytes whose expanded tree has 9^9
nodes, and validating or walking it took opsmedic more than 45 s. `LimitedSafeLoader` refuses, before
anything walks the data:

- text longer than `MAX_CHARS`;
- nesting deeper than `MAX_DEPTH`, counted through aliases (deep nesting also overflows recursive walkers);
- more than `MAX_ALIASES` aliases, a recursive alias (`&a [*a]`), or an expanded tree (every alias
  counted as a copy of what it names) of more than `MAX_NODES` nodes.

The errors are `yaml.MarkedYAMLError`s (`YamlLimitError`), so a caller's existing `except yaml.YAMLError`
reports them with the line like any syntax error. The check walks the composed node graph once, with
memoisation, so it costs time proportional to the text, not to the expansion.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_CHARS = 2 * 1024 * 1024  # our largest YAML file is ~12 kB
MAX_DEPTH = 64
MAX_ALIASES = 1_000
MAX_NODES = 100_000  # a 10,000-GPU scenario written out one GPU per entry stays well under this


class YamlLimitError(yaml.MarkedYAMLError):
    """The YAML is well-formed but exceeds a limit (an alias bomb, deep nesting, a huge file)."""

    def __init__(self, problem: str, mark: yaml.Mark | None = None) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class LimitedSafeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that counts aliases and nesting while composing (see the module docstring)."""

    def __init__(self, stream: str) -> None:
        if len(stream) > MAX_CHARS:
            raise YamlLimitError(f"the YAML text is larger than {MAX_CHARS // (1024 * 1024)} MiB")
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YamlLimitError(f"more than {MAX_ALIASES} aliases (*name): refused as a possible "
                                     "alias bomb", self._mark())
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlLimitError(f"nested deeper than {MAX_DEPTH} levels", self._mark())
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    def _mark(self) -> yaml.Mark | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        return getattr(event, "start_mark", None)


def check_expansion(node: yaml.Node | None) -> None:
    """Refuse a node graph whose expansion (aliases copied out) is too large, too deep or recursive."""
    if node is None:
        return
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded node count, expanded height)
    active: set[int] = set()

    def walk(n: yaml.Node, level: int) -> tuple[int, int]:
        key = id(n)
        known = sizes.get(key)
        if known is None:
            if key in active:
                raise YamlLimitError("a recursive alias (a node that contains itself)", n.start_mark)
            if level > MAX_DEPTH:
                raise YamlLimitError(f"nested deeper than {MAX_DEPTH} levels once aliases are expanded",
                                     n.start_mark)
            active.add(key)
            count, height = 1, 0
            children: list[yaml.Node] = []
            if isinstance(n, yaml.SequenceNode):
                children = list(n.value)
            elif isinstance(n, yaml.MappingNode):
                children = [part for pair in n.value for part in pair]
            for child in children:
                c, h = walk(child, level + 1)
                count += c
                height = max(height, h + 1)
                if count > MAX_NODES:
                    raise YamlLimitError(f"expands to more than {MAX_NODES:,} nodes: refused as an alias bomb",
                                         n.start_mark)
            active.discard(key)
            known = sizes[key] = (count, height)
        if level + known[1] > MAX_DEPTH:
            raise YamlLimitError(f"nested deeper than {MAX_DEPTH} levels once aliases are expanded",
                                 n.start_mark)
        return known

    walk(node, 0)


def compose_and_load(text: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for line numbers and duplicate-key checks) and the plain data of one YAML document,
    parsed once, within the limits. Raises `yaml.YAMLError` (`YamlLimitError` for a limit)."""
    loader = LimitedSafeLoader(text)
    try:
        node = loader.get_single_node()
        check_expansion(node)
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return node, data


def safe_load(text: str) -> Any:
    """`yaml.safe_load` within the limits."""
    return compose_and_load(text)[1]
