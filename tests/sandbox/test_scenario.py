"""The scenario contract (SCENARIOS.md): the loader accepts every valid scenario and rejects every broken
one with a ScenarioError that names the file, the key and what was expected; durations; placement."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.domain import ACTION_NAMES, ROOT_CAUSES
from core.errors import InputError, ScenarioError
from sandbox.scenario import (
    format_duration,
    load_scenario,
    parse_duration,
    parse_scenario,
    place_pods,
    scenario_files,
)

Raw = dict[str, Any]


def _error(write_scenario: Callable[..., Path], raw: Raw | str, name: str = "broken") -> tuple[str, Path]:
    path = write_scenario(raw, name=name)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert isinstance(info.value, InputError)  # the CLI maps InputError to exit 2
    return str(info.value), path


def _xid_scenario(make_raw: Callable[..., Raw], **fault: Any) -> Raw:
    f = {"at": "1m", "type": "gpu_xid", "target": "node-0/gpu-1", "params": {"xid": 13}}
    f.update(fault)
    return make_raw(faults=[f], expect={"incident": True})


# ----------------------------------------------------------------------------------- valid scenarios


def test_every_example_scenario_loads(example_files: list[Path]) -> None:
    names = set()
    for p in example_files:
        s = load_scenario(p)
        assert s.name == p.stem
        names.add(s.name)
        assert s.expectations and all(isinstance(e.incident, bool) for e in s.expectations)
    assert len(names) == len(example_files)


def test_every_heldout_scenario_loads(heldout_files: list[Path]) -> None:
    for p in heldout_files:
        assert load_scenario(p).name == p.stem


def test_optional_keys_take_their_defaults(make_raw: Callable[..., Raw]) -> None:
    raw = make_raw()
    for key in ("seed", "tick", "placement", "approvals"):
        raw.pop(key, None)
    s = parse_scenario(raw, "t.yaml")
    assert (s.seed, s.tick, s.placement, s.approvals) == (0, 10.0, {}, "approve")
    assert s.cluster.gpu_model == "H100-80GB"


def test_durations_in_the_file_become_seconds(make_raw: Callable[..., Raw]) -> None:
    raw = make_raw(
        duration="1h30m",
        tick="30s",
        faults=[
            {
                "at": "90s",
                "type": "gpu_thermal",
                "target": "node-1/gpu-0",
                "params": {"temp_c": 95, "for": "2m"},
            }
        ],
        expect={"incident": True, "detect_within": "1m"},
    )
    s = parse_scenario(raw)
    assert s.duration == 5400.0 and s.tick == 30.0
    assert s.faults[0].at == 90.0 and s.faults[0].typed_params().for_ == 120.0
    assert s.expectations[0].detect_within == 60.0


def test_forbidden_any_is_accepted(make_raw: Callable[..., Raw]) -> None:
    s = parse_scenario(make_raw(expect={"incident": False, "forbidden": ["any"]}))
    assert s.expectations[0].forbidden == ["any"]


def test_expect_list_with_resources(make_raw: Callable[..., Raw]) -> None:
    raw = make_raw(
        expect=[
            {"incident": True, "resource": "node-0/gpu-1"},
            {"incident": True, "resource": "fraud-model-1"},
        ]
    )
    s = parse_scenario(raw)
    assert [e.resource for e in s.expectations] == ["node-0/gpu-1", "fraud-model-1"]


def test_power_cap_accepts_a_gpu_or_a_node(make_raw: Callable[..., Raw]) -> None:
    for target in ("node-1", "node-1/gpu-2"):
        raw = make_raw(faults=[{"at": "1m", "type": "power_cap_under_load", "target": target}])
        assert parse_scenario(raw).faults[0].target == target


def test_empty_fault_list_is_a_valid_scenario(make_raw: Callable[..., Raw]) -> None:
    assert parse_scenario(make_raw(faults=None)).faults == []


# ---------------------------------------------------------------------------------- parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("250ms", 0.25),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("1.5m", 90.0),
        (" 2m ", 120.0),
        (45, 45.0),
        (1.5, 1.5),
        (0, 0.0),
    ],
)
def test_parse_duration(text: Any, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "bad", ["", "m", "30", "thirty seconds", "30 minutes", "5x", "-5s", "1h-2m", -5, True, None, [30]]
)
def test_parse_duration_rejects(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("seconds", "text"), [(30, "30s"), (120, "2m"), (3600, "1h"), (90, "1m30s"), (0, "0s")]
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(format_duration(seconds)) == seconds


# ------------------------------------------------------------------------------------ broken files


def test_unknown_top_level_key(write_scenario: Callable[..., Path], make_raw: Callable[..., Raw]) -> None:
    msg, path = _error(write_scenario, make_raw(colour="blue"))
    assert str(path) in msg and "colour" in msg and "unknown key" in msg


@pytest.mark.parametrize(
    ("where", "mutate"),
    [
        ("cluster.racks", lambda r: r["cluster"].update(racks=2)),
        ("workloads[0].priority", lambda r: r["workloads"][0].update(priority=1)),
        ("faults[0].severity", lambda r: r["faults"][0].update(severity="high")),
        ("faults[0].params.bogus", lambda r: r["faults"][0]["params"].update(bogus=1)),
    ],
)
def test_unknown_nested_key(
    write_scenario: Callable[..., Path],
    make_raw: Callable[..., Raw],
    where: str,
    mutate: Callable[[Raw], None],
) -> None:
    raw = _xid_scenario(make_raw)
    mutate(raw)
    msg, path = _error(write_scenario, raw)
    assert str(path) in msg and where in msg and "unknown key" in msg


def test_unknown_key_in_expect_is_named(
    write_scenario: Callable[..., Path], make_raw: Callable[..., Raw]
) -> None:
    msg, path = _error(write_scenario, make_raw(expect={"incident": True, "recover": True}))
    assert str(path) in msg and "recover" in msg and "unknown key" in msg


def test_unknown_fault_type(write_scenario: Callable[..., Path], make_raw: Callable[..., Raw]) -> None:
    msg, path = _error(write_scenario, _xid_scenario(make_raw, type="gpu_melt"))
    assert str(path) in msg and "faults[0].type" in msg and "gpu_melt" in msg
    for expected in ("gpu_xid", "node_not_ready", "log_injection"):  # what was expected
        assert expected in msg


def test_unknown_root_cause_label(write_scenario: Callable[..., Path], make_raw: Callable[..., Raw]) -> None:
    msg, path = _error(write_scenario, make_raw(expect={"incident": True, "root_cause": "gpu_on_fire"}))
    assert str(path) in msg and "root_cause" in msg and "gpu_on_fire" in msg
    assert all(label in msg for label in ROOT_CAUSES)


def test_expect_error_names_the_key_path_as_written(
    write_scenario: Callable[..., Path], make_raw: Callable[..., Raw]
) -> None:
    msg, _ = _error(write_scenario, make_raw(expect={"incident": True, "root_cause": "gpu_on_fire"}))
    assert "expect.root_cause:" in msg and "ExpectSpec" not in msg


def test_unknown_root_cause_in_an_expect_list(
    write_scenario: Callable[..., Path], make_raw: Callable[..., Raw]
) -> None:
    raw = make_raw(
        expect=[
            {"incident": True, "resource": "node-0/gpu-1", "root_cause": "gpu_on_fire"},
            {"incident": True, "resource": "fraud-model-1"},
        ]
    )
    msg, path = _error(write_scenario, raw)
    assert str(path) in msg and "root_cause" in msg and "gpu_on_fire" in msg and "gpu_fell_off_bus" in msg


@pytest.mark.parametrize(
    ("key", "ref"),
    [
        ("actions", "reboot_node@node-0"),
        ("actions", "any"),
        ("forbidden", "reboot_node"),
        ("actions", "Cordon_Node@node-0"),
    ],
)
def test_unknown_action_in_expect(
    write_scenario: Callable[..., Path], make_raw: Callable[..., Raw], key: str, ref: str
) -> None:
    msg, path = _error(write_scenario, make_raw(expect={"incident": True, key: [ref]}))
    assert str(path) in msg and key in msg and repr(ref) in msg
    assert "is not an action" in msg and all(a in msg for a in ACTION_NAMES)


def test_action_target_must_exist(write_scenario: Callable[..., Path], make_raw: Callable[..., Raw]) -> None:
    msg, path = _error(write_scenario, make_raw(expect={"incident": True, "actions": ["cordon_node@node-9"]}))
    assert str(path) in msg and "expect.actions[0]" in msg and "node-9" in msg


def test_expect_resource_must_exist(
    write_scenario: Callable[..., Path], make_raw: Callable[..., Raw]
) -> None:
    msg, path = _error(write_scenario, make_raw(expect={"incident": True, "resource": "node-7/gpu-0"}))
    assert str(path) in msg and "expect.resource" in msg and "node-7/gpu-0" in msg


@pytest.mark.parametrize(
    ("key", "set_bad"),
    [
        ("duration", lambda r: r.update(duration="30 minutes")),
        ("duration", lambda r: r.update(duration=-5)),
        ("tick", lambda r: r.update(tick="often")),
        ("faults[0].at", lambda r: r["faults"][0].update(at="soon")),
        ("faults[0].params.every", lambda r: r["faults"][0]["params"].update(repeat=2, every="later")),
        (
            "workloads[0].checkpoint_every",
            lambda r: r["workloads"].__setitem__(
                0,
                {
                    "name": "tr",
                    "kind": "training",
                    "replicas": 1,
                    "gpus_per_replica": 1,
                    "checkpoint_every": "x",
                },
            ),
        ),
        ("detect_within", lambda r: r["expect"].update(detect_within="fast")),
    ],
)
def test_bad_duration(
    write_scenario: Callable[..., Path],
    make_raw: Callable[..., Raw],
    key: str,
    set_bad: Callable[[Raw], None],
) -> None:
    raw = _xid_scenario(make_raw)
    set_bad(raw)
    msg, path = _error(write_scenario, raw)
    assert str(path) in msg and key in msg
    assert "duration" in msg  # what was expected: "a duration such as 30s, 2m or 1h" / "cannot be negative"


def test_tick_out_of_range(write_scenario: Callable[..., Path], make_raw: Callable[..., Raw]) -> None:
    msg, path = _error(write_scenario, make_raw(tick="500ms"))
    assert str(path) in msg and "tick" in msg and "between 1s and 5m" in msg


@pytest.mark.parametrize(
    "key", ["name", "description", "cluster", "workloads", "faults", "duration", "expect"]
)
def test_missing_required_key(
    write_scenario: Callable[..., Path], make_raw: Callable[..., Raw], key: str
) -> None:
    raw = make_raw()
    del raw[key]
    msg, path = _error(write_scenario, raw)
    assert str(path) in msg and f": {key}:" in msg and "required key is missing" in msg


@pytest.mark.parametrize(
    ("where", "drop"),
    [
        ("expect", lambda r: r["expect"].pop("incident")),
        ("cluster.nodes", lambda r: r["cluster"].pop("nodes")),
        ("workloads[0].kind", lambda r: r["workloads"][0].pop("kind")),
        ("faults[0].target", lambda r: r["faults"][0].pop("target")),
        ("faults[0].params.xid", lambda r: r["faults"][0].update(params={})),
    ],
)
def test_missing_nested_key(
    write_scenario: Callable[..., Path], make_raw: Callable[..., Raw], where: str, drop: Callable[[Raw], None]
) -> None:
    raw = _xid_scenario(make_raw)
    drop(raw)
    msg, path = _error(write_scenario, raw)
    assert str(path) in msg and where in msg and "required key is missing" in msg


@pytest.mark.parametrize(
    ("ftype", "target", "params", "needs"),
    [
        ("gpu_xid", "node-0", {"xid": 79}, "a GPU"),
        ("gpu_xid", "node-7/gpu-0", {"xid": 79}, "a GPU"),
        ("gpu_xid", "node-0/gpu-4", {"xid": 79}, "a GPU"),  # 4 GPUs per node: gpu-0..gpu-3
        ("gpu_ecc", "fraud-model-0", {}, "a GPU"),
        ("gpu_thermal", "node-1", {"temp_c": 95}, "a GPU"),
        ("nvlink_errors", "node-1", {"rate_per_min": 10}, "a GPU"),
        ("transient_spike", "node-1", {"metric": "util", "value": 1}, "a GPU"),
        ("power_cap_under_load", "fraud-model-0", {}, "a GPU or a node"),
        ("node_not_ready", "node-0/gpu-0", {}, "a node"),
        ("node_not_ready", "node-2", {}, "a node"),
        ("gpu_memory_leak", "node-0/gpu-0", {"rate_gib_per_min": 1}, "a pod"),
        ("pod_crashloop", "fraud-model-5", {}, "a pod"),
        ("log_injection", "node-0", {"text": "x"}, "a pod"),
        ("training_stall", "fraud-model-0", {}, "a pod of a training workload"),
        ("model_bad_deploy", "fraud-model-0", {"accuracy": 0.5}, "a model"),
        ("data_drift", "chat-llm", {"psi": 0.3}, "a model"),
    ],
)
def test_fault_target_must_exist_and_fit_the_type(
    write_scenario: Callable[..., Path],
    make_raw: Callable[..., Raw],
    ftype: str,
    target: str,
    params: Raw,
    needs: str,
) -> None:
    raw = make_raw(faults=[{"at": "1m", "type": ftype, "target": target, "params": params}])
    msg, path = _error(write_scenario, raw)
    assert str(path) in msg and "faults[0].target" in msg and repr(target) in msg
    assert f"{ftype} needs {needs}" in msg


def test_fault_after_the_duration(write_scenario: Callable[..., Path], make_raw: Callable[..., Raw]) -> None:
    msg, path = _error(write_scenario, _xid_scenario(make_raw, at="1h"))
    assert str(path) in msg and "faults[0].at" in msg and "after the scenario's duration" in msg


@pytest.mark.parametrize(
    ("where", "params"),
    [
        ("faults[0].params.xid", {"xid": "lots"}),
        ("faults[0].params.xid", {"xid": 0}),
        ("faults[0].params", [79]),
    ],
)
def test_bad_fault_params(
    write_scenario: Callable[..., Path], make_raw: Callable[..., Raw], where: str, params: Any
) -> None:
    msg, path = _error(write_scenario, _xid_scenario(make_raw, params=params))
    assert str(path) in msg and where in msg


def test_bad_params_name_the_fault_type(
    write_scenario: Callable[..., Path], make_raw: Callable[..., Raw]
) -> None:
    raw = make_raw(
        faults=[{"at": "1m", "type": "gpu_thermal", "target": "node-0/gpu-0", "params": {"for": "1m"}}]
    )
    msg, _ = _error(write_scenario, raw)
    assert "faults[0].params.temp_c" in msg and "gpu_thermal" in msg and "required key is missing" in msg


def test_placement_to_an_unknown_node(
    write_scenario: Callable[..., Path], make_raw: Callable[..., Raw]
) -> None:
    msg, path = _error(write_scenario, make_raw(placement={"fraud-model-0": "node-5"}))
    assert (
        str(path) in msg and "placement.fraud-model-0" in msg and "node-5" in msg and "node-0..node-1" in msg
    )


def test_placement_of_an_unknown_pod(
    write_scenario: Callable[..., Path], make_raw: Callable[..., Raw]
) -> None:
    msg, path = _error(write_scenario, make_raw(placement={"fraud-model-9": "node-0"}))
    assert str(path) in msg and "placement.fraud-model-9" in msg and "fraud-model-0" in msg


def _unfittable(make_raw: Callable[..., Raw]) -> Raw:
    raw = make_raw()  # 2 nodes x 4 GPUs
    raw["workloads"][0].update(replicas=3, gpus_per_replica=3)
    return raw


def test_place_pods_rejects_a_pod_that_cannot_fit(make_raw: Callable[..., Raw]) -> None:
    # the loader places the pods itself, so an unfittable pod is a load error naming the file
    with pytest.raises(ScenarioError) as info:
        parse_scenario(_unfittable(make_raw), "t.yaml")
    assert "t.yaml" in str(info.value)
    assert "fraud-model-2" in str(info.value) and "3 GPU(s)" in str(info.value)


def test_place_pods_rejects_a_pin_to_a_full_node(make_raw: Callable[..., Raw]) -> None:
    raw = make_raw(placement={"fraud-model-0": "node-1", "fraud-model-1": "node-1"})
    raw["workloads"][0]["gpus_per_replica"] = 3
    with pytest.raises(ScenarioError) as info:
        place_pods(parse_scenario(raw))
    assert "placement.fraud-model-1" in str(info.value) and "node-1 has only 1 free" in str(info.value)


def test_a_pod_that_cannot_fit_is_a_load_error(
    write_scenario: Callable[..., Path], make_raw: Callable[..., Raw]
) -> None:
    msg, path = _error(write_scenario, _unfittable(make_raw))
    assert str(path) in msg and "workloads" in msg and "fraud-model-2" in msg


@pytest.mark.parametrize(
    ("key", "workload"),
    [
        (
            "checkpoint_every",
            {
                "name": "inf",
                "kind": "inference",
                "replicas": 1,
                "gpus_per_replica": 1,
                "checkpoint_every": "10m",
            },
        ),
        ("model", {"name": "tr", "kind": "training", "replicas": 1, "gpus_per_replica": 1, "model": "m"}),
        (
            "current_version",
            {"name": "tr", "kind": "training", "replicas": 1, "gpus_per_replica": 1, "current_version": 2},
        ),
        (
            "slo",
            {
                "name": "tr",
                "kind": "training",
                "replicas": 1,
                "gpus_per_replica": 1,
                "slo": {"accuracy_min": 0.9},
            },
        ),
    ],
)
def test_training_only_and_inference_only_keys(
    write_scenario: Callable[..., Path], make_raw: Callable[..., Raw], key: str, workload: Raw
) -> None:
    raw = make_raw()
    raw["workloads"].append(workload)
    msg, path = _error(write_scenario, raw)
    assert str(path) in msg and "workloads[1]" in msg and f"`{key}`" in msg
    assert (
        ("for training workloads" in msg) if key == "checkpoint_every" else ("for inference workloads" in msg)
    )


def test_duplicate_workload_names(write_scenario: Callable[..., Path], make_raw: Callable[..., Raw]) -> None:
    raw = make_raw()
    raw["workloads"].append({**raw["workloads"][0], "model": "other-model"})
    msg, path = _error(write_scenario, raw)
    assert str(path) in msg and "workloads[0].name" in msg and "used twice" in msg


def test_two_workloads_serving_one_model(
    write_scenario: Callable[..., Path], make_raw: Callable[..., Raw]
) -> None:
    raw = make_raw()
    raw["workloads"].append({**raw["workloads"][0], "name": "fraud-b"})
    msg, path = _error(write_scenario, raw)
    assert str(path) in msg and "model" in msg and "served by two workloads" in msg


def test_expect_list_without_resources(
    write_scenario: Callable[..., Path], make_raw: Callable[..., Raw]
) -> None:
    raw = make_raw(expect=[{"incident": True, "resource": "node-0/gpu-1"}, {"incident": True}])
    msg, path = _error(write_scenario, raw)
    assert str(path) in msg and "expect[1].resource" in msg and "needs a resource" in msg


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("approvals", "maybe"),
        ("name", "Bad_Name"),
        ("name", "-lead"),
        ("seed", "seven"),
    ],
)
def test_bad_top_level_values(
    write_scenario: Callable[..., Path], make_raw: Callable[..., Raw], key: str, value: Any
) -> None:
    msg, path = _error(write_scenario, make_raw(**{key: value}))
    assert str(path) in msg and f": {key}:" in msg


def test_bad_enum_lists_the_expected_values(
    write_scenario: Callable[..., Path], make_raw: Callable[..., Raw]
) -> None:
    raw = make_raw()
    raw["workloads"][0]["kind"] = "batch"
    msg, path = _error(write_scenario, raw)
    assert str(path) in msg and "workloads[0].kind" in msg and "'training'" in msg and "'inference'" in msg


def test_bad_gpu_model_lists_the_valid_spellings(
    write_scenario: Callable[..., Path], make_raw: Callable[..., Raw]
) -> None:
    raw = make_raw()
    raw["cluster"]["gpu_model"] = "V100"
    msg, path = _error(write_scenario, raw)
    assert str(path) in msg and "cluster.gpu_model" in msg
    assert "'H100-80GB'" in msg and "'A100-80GB'" in msg and "'L4'" in msg


def test_invalid_yaml_names_the_line(write_scenario: Callable[..., Path]) -> None:
    text = "name: x\ndescription: y\ncluster: {nodes: 1\nworkloads: []\n"
    msg, path = _error(write_scenario, text)
    assert str(path) in msg and "line 4" in msg and "invalid YAML" in msg


def test_top_level_must_be_a_mapping(write_scenario: Callable[..., Path]) -> None:
    msg, path = _error(write_scenario, "- just\n- a list\n")
    assert str(path) in msg and "mapping" in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="file not found") as info:
        load_scenario(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)


def test_scenario_files_expands_folders(
    tmp_path: Path, write_scenario: Callable[..., Path], make_raw: Callable[..., Raw]
) -> None:
    b = write_scenario(make_raw(name="b"))
    a = write_scenario(make_raw(name="a"))
    (tmp_path / "notes.txt").write_text("not a scenario")
    assert scenario_files([tmp_path]) == [a, b]
    assert scenario_files([b, a]) == [b, a]
    with pytest.raises(ScenarioError, match="no such file"):
        scenario_files([tmp_path / "missing"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ScenarioError, match="no \\*.yaml"):
        scenario_files([empty])


# -------------------------------------------------------------------------------------------- placement


def _placement_raw(make_raw: Callable[..., Raw], placement: dict[str, str] | None = None) -> Raw:
    return make_raw(
        cluster={"nodes": 3, "gpus_per_node": 8},
        workloads=[
            {"name": "big", "kind": "training", "replicas": 2, "gpus_per_replica": 6},
            {"name": "small", "kind": "inference", "replicas": 3, "gpus_per_replica": 2},
        ],
        placement=placement or {},
    )


def test_placement_order_lowest_node_lowest_gpus(make_raw: Callable[..., Raw]) -> None:
    placed = place_pods(parse_scenario(_placement_raw(make_raw)))
    assert list(placed) == ["big-0", "big-1", "small-0", "small-1", "small-2"]  # workloads, then replicas
    assert placed == {
        "big-0": ("node-0", [0, 1, 2, 3, 4, 5]),
        "big-1": ("node-1", [0, 1, 2, 3, 4, 5]),  # node-0 has only 2 left
        "small-0": ("node-0", [6, 7]),  # the lowest node with room, its lowest free GPUs
        "small-1": ("node-1", [6, 7]),
        "small-2": ("node-2", [0, 1]),
    }


def test_pinning_takes_the_pinned_nodes_lowest_free_gpus(make_raw: Callable[..., Raw]) -> None:
    placed = place_pods(parse_scenario(_placement_raw(make_raw, {"big-1": "node-2", "small-0": "node-2"})))
    assert placed == {
        "big-0": ("node-0", [0, 1, 2, 3, 4, 5]),
        "big-1": ("node-2", [0, 1, 2, 3, 4, 5]),
        "small-0": ("node-2", [6, 7]),
        "small-1": ("node-0", [6, 7]),
        "small-2": ("node-1", [0, 1]),
    }


def test_pods_are_placed_in_order_so_a_later_pin_can_find_its_node_full(make_raw: Callable[..., Raw]) -> None:
    raw = make_raw(
        cluster={"nodes": 2, "gpus_per_node": 8},
        workloads=[
            {"name": "a", "kind": "training", "replicas": 1, "gpus_per_replica": 8},
            {"name": "b", "kind": "training", "replicas": 1, "gpus_per_replica": 8},
        ],
        placement={"b-0": "node-0"},
    )
    with pytest.raises(ScenarioError, match="b-0"):
        place_pods(parse_scenario(raw))


def test_the_simulator_starts_with_the_contract_placement(make_raw: Callable[..., Raw]) -> None:
    from sandbox.cluster import Simulator

    s = parse_scenario(_placement_raw(make_raw, {"small-0": "node-2"}))
    snap = Simulator(s).snapshot()
    for pod, (node, gpus) in place_pods(s).items():
        p = snap.pod(pod)
        assert p is not None and p.node == node and p.gpus == [f"{node}/gpu-{i}" for i in gpus]
        assert p.phase == "Running" and p.ready
