"""The NVML collector against the fake NVML built from the recorded H100 snapshot."""

from __future__ import annotations

import logging
import threading
import time

import pynvml  # type: ignore[import-untyped]
import pytest
from fakes.fake_nvml import FakeNvml

from core.domain import CLOCK_REASON_GPU_IDLE, CLOCK_REASON_SW_POWER_CAP
from core.errors import ToolError
from tools.telemetry.nvml import (
    NVML_UNAVAILABLE_MESSAGE,
    NvmlCollector,
    NvmlUnavailable,
    XidWatcher,
    open_gpu_source,
)
from tools.telemetry.replay import NvmlReplaySource
from tools.telemetry.source import GpuSource


def wait_for(predicate: object, timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.005)
    raise AssertionError("condition not met in time")


# ---------------------------------------------------------------------------------------- fields


def test_every_field_from_the_recorded_snapshot(collector: NvmlCollector) -> None:
    readings = collector.read()
    assert [r.sample.gpu for r in readings] == ["node-1/gpu-0", "node-1/gpu-1"]
    s = readings[0].sample
    assert (s.node, s.index, s.present) == ("node-1", 0, True)
    assert (s.util_pct, s.mem_util_pct) == (0.0, 0.0)
    assert s.mem_used_mib == pytest.approx(503316480 / 2**20)
    assert s.mem_total_mib == pytest.approx(85520809984 / 2**20)  # 81559 MiB, as in the trace
    assert s.temp_c == 35.0
    assert s.power_w == pytest.approx(72.029)
    assert s.power_limit_w == 700.0
    assert (s.sm_clock_mhz, s.mem_clock_mhz) == (345.0, 2619.0)
    assert s.clock_event_reasons == CLOCK_REASON_GPU_IDLE
    assert (s.ecc_sbe_volatile, s.ecc_dbe_volatile, s.ecc_dbe_aggregate) == (0, 0, 0)
    assert (s.remapped_rows_correctable, s.remapped_rows_uncorrectable) == (0, 0)
    assert (s.remap_pending, s.remap_failure) == (False, False)
    assert s.pcie_replay_counter == 0
    assert s.xids == [] and s.processes == []
    assert readings[0].mem_temp_c == 38.0  # HBM temperature, from NVML_FI_DEV_MEMORY_TEMP
    assert readings[0].errors == ()


def test_nvlink_absent_on_the_recorded_pcie_h100(collector: NvmlCollector) -> None:
    reading = collector.read()[0]
    assert reading.sample.nvlink_crc_errors is None
    assert reading.sample.nvlink_replay_errors is None
    # recovery_action: XID 154's field, which this collector does not read (yet)
    assert reading.absent == ("nvlink_crc_errors", "nvlink_replay_errors", "recovery_action")


def test_changed_values_are_read_each_sample(fake: FakeNvml, collector: NvmlCollector) -> None:
    fake.set_utilization(1, gpu=100, memory=37)
    fake.set_memory_used(1, 41 * 2**30)
    fake.set_value(1, "temperature_gpu", 64)
    fake.set_value(1, "power_usage_mw", 724_000)
    fake.set_value(1, "clock_sm_mhz", 1755)
    fake.set_clock_reasons(1, CLOCK_REASON_SW_POWER_CAP)
    fake.set_ecc(1, corrected_volatile=12, uncorrected_volatile=2, uncorrected_aggregate=3)
    fake.set_remapped_rows(1, correctable=1, uncorrectable=2, pending=True, failure=True)
    fake.set_value(1, "pcie_replay_counter", 9)
    fake.set_processes(1, [4242, 4343])
    fake.set_field(1, "NVML_FI_DEV_MEMORY_TEMP", 71)
    reading = collector.read()[1]  # first read of this collector: the slow PCIe counter is read too
    s = reading.sample
    assert (s.util_pct, s.mem_util_pct, s.mem_used_mib) == (100.0, 37.0, 41 * 1024)
    assert (s.temp_c, s.power_w, s.sm_clock_mhz) == (64.0, 724.0, 1755.0)
    assert s.clock_event_reasons == CLOCK_REASON_SW_POWER_CAP
    assert (s.ecc_sbe_volatile, s.ecc_dbe_volatile, s.ecc_dbe_aggregate) == (12, 2, 3)
    assert (s.remapped_rows_correctable, s.remapped_rows_uncorrectable) == (1, 2)
    assert s.remap_pending is True and s.remap_failure is True
    assert s.pcie_replay_counter == 9
    assert s.processes == ["4242", "4343"]
    assert reading.mem_temp_c == 71.0
    assert collector.sample()[0].temp_c == 35.0  # the other GPU is untouched


def test_nvlink_counters_summed_over_links_where_supported(fake: FakeNvml) -> None:
    fake.enable_nvlink(0, links=18, crc=5, replay=2)
    fake.gpus[0].nvlink[17][pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT] = 1
    with NvmlCollector(fake, node="n", watch_xids=False) as c:
        s0, s1 = c.sample()
        assert (s0.nvlink_crc_errors, s0.nvlink_replay_errors) == (6, 2)
        assert (s1.nvlink_crc_errors, s1.nvlink_replay_errors) == (None, None)
        probes = fake.calls["nvmlDeviceGetNvLinkState"]
        assert probes == 18 + 1 + 1  # 18 links + INVALID_ARGUMENT at link 18, and GPU 1's NOT_SUPPORTED
        c.sample()
        assert fake.calls["nvmlDeviceGetNvLinkState"] == probes  # links probed once, not every sample


def test_pcie_replay_counter_is_read_at_the_slow_interval(fake: FakeNvml) -> None:
    # ~370 us per read on the H100 against ~70 us for the rest of a sample: read it every slow_interval_s.
    with NvmlCollector(fake, node="n", watch_xids=False, slow_interval_s=0.05) as c:
        assert c.sample()[0].pcie_replay_counter == 0
        fake.set_value(0, "pcie_replay_counter", 7)
        assert c.sample()[0].pcie_replay_counter == 0  # cached within the interval
        assert fake.calls["nvmlDeviceGetPcieReplayCounter"] == 2  # once per GPU
        time.sleep(0.06)
        assert c.sample()[0].pcie_replay_counter == 7
    with NvmlCollector(fake, node="n", watch_xids=False, slow_interval_s=0) as c:
        fake.set_value(0, "pcie_replay_counter", 8)
        assert c.sample()[0].pcie_replay_counter == 8


def test_pcie_replay_counter_error_is_retried_next_sample(fake: FakeNvml) -> None:
    fake.set_error(0, "pcie_replay_counter", pynvml.NVML_ERROR_UNKNOWN)
    with NvmlCollector(fake, node="n", watch_xids=False) as c:
        assert c.sample()[0].pcie_replay_counter is None
        fake.set_value(0, "pcie_replay_counter", 3)
        assert c.sample()[0].pcie_replay_counter == 3


# ---------------------------------------------------------------------------------------- absent


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ("utilization", "util_pct"),
        ("memory_info", "mem_used_mib"),
        ("temperature_gpu", "temp_c"),
        ("power_usage_mw", "power_w"),
        ("enforced_power_limit_mw", "power_limit_w"),
        ("clock_sm_mhz", "sm_clock_mhz"),
        ("ecc_uncorrected_volatile", "ecc_dbe_volatile"),
        ("ecc_uncorrected_aggregate", "ecc_dbe_aggregate"),
        ("remapped_rows", "remap_pending"),
        ("pcie_replay_counter", "pcie_replay_counter"),
    ],
)
@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_NO_PERMISSION])
def test_not_supported_is_absent_not_an_error(fake: FakeNvml, call: str, field: str, code: int) -> None:
    fake.set_error(0, call, code)
    with NvmlCollector(fake, node="n", watch_xids=False) as c:
        reading = c.read()[0]
        assert getattr(reading.sample, field) is None
        assert field in reading.absent
        assert reading.errors == () and c.errors == 0
        assert reading.sample.present is True


def test_absent_calls_are_not_repeated(fake: FakeNvml) -> None:
    fake.set_not_supported(0, "temperature_gpu")
    with NvmlCollector(fake, node="n", watch_xids=False) as c:
        c.sample()
        first = fake.calls["nvmlDeviceGetTemperature"]
        for _ in range(5):
            c.sample()
        # GPU 0 stopped asking; GPU 1 (supported) asks every time.
        assert fake.calls["nvmlDeviceGetTemperature"] == first + 5


def test_memory_temperature_field_not_supported(fake: FakeNvml) -> None:
    fake.set_field(0, "NVML_FI_DEV_MEMORY_TEMP", None)
    with NvmlCollector(fake, node="n", watch_xids=False) as c:
        assert c.read()[0].mem_temp_c is None
        c.read()
        assert fake.calls["nvmlDeviceGetFieldValues"] == 3  # GPU 0 once, GPU 1 twice


def test_event_reasons_fall_back_to_throttle_reasons_on_old_drivers(fake: FakeNvml) -> None:
    fake.set_error(0, "clocks_event_reasons(nvmlDeviceGetCurrentClocksEventReasons)",
                   pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    fake.set_value(0, "clocks_event_reasons(nvmlDeviceGetCurrentClocksThrottleReasons)", 0x4)
    with NvmlCollector(fake, node="n", watch_xids=False) as c:
        assert c.sample()[0].clock_event_reasons == 0x4
        assert c.sample()[0].clock_event_reasons == 0x4
    assert fake.calls["nvmlDeviceGetCurrentClocksEventReasons"] == 1 + 2  # GPU 0 once, GPU 1 twice


def test_missing_binding_function_is_absent(fake: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    # A pynvml too old to know the call raises AttributeError on lookup; that is absent too.
    monkeypatch.setattr(FakeNvml, "nvmlDeviceGetPcieReplayCounter", property(lambda self: None), raising=True)
    with NvmlCollector(fake, node="n", watch_xids=False) as c:
        assert c.sample()[0].pcie_replay_counter is None


def test_unexpected_nvml_error_leaves_field_none_and_is_counted(fake: FakeNvml) -> None:
    fake.set_error(0, "power_usage_mw", pynvml.NVML_ERROR_UNKNOWN)
    with NvmlCollector(fake, node="n", watch_xids=False) as c:
        reading = c.read()[0]
        assert reading.sample.power_w is None and reading.sample.present is True
        assert reading.errors == ("nvmlDeviceGetPowerUsage(): NVMLError_Unknown",)
        assert c.errors == 1
        fake.set_value(0, "power_usage_mw", 80_000)  # transient: asked again and read next time
        assert c.sample()[0].power_w == 80.0


# ---------------------------------------------------------------------------------------- lost GPU


def test_lost_gpu_is_not_present(fake: FakeNvml, collector: NvmlCollector) -> None:
    fake.lose_gpu(1, xid=None)
    s0, s1 = collector.sample()
    assert s0.present is True
    assert s1.present is False and s1.gpu == "node-1/gpu-1"
    assert s1.util_pct is None and s1.temp_c is None and s1.power_w is None
    fake.recover_gpu(1)
    assert collector.sample()[1].present is True


def test_gpu_lost_before_open_is_reported_and_can_come_back(fake: FakeNvml) -> None:
    fake.lose_gpu(0, xid=None)
    with NvmlCollector(fake, node="n", watch_xids=False) as c:
        assert [s.present for s in c.sample()] == [False, True]
        fake.recover_gpu(0)
        assert [s.present for s in c.sample()] == [True, True]


def test_gpu_lost_in_a_field_value(fake: FakeNvml, collector: NvmlCollector) -> None:
    fake.gpus[0].fields[pynvml.NVML_FI_DEV_MEMORY_TEMP]["nvmlReturn"] = pynvml.NVML_ERROR_GPU_IS_LOST
    assert collector.sample()[0].present is False


# ---------------------------------------------------------------------------------------- session


def test_one_session_for_many_samples_and_clean_shutdown(fake: FakeNvml) -> None:
    c = NvmlCollector.open(fake, node="n")
    for _ in range(10):
        c.sample()
    assert fake.calls["nvmlInit"] == 1 and fake.calls["nvmlDeviceGetHandleByIndex"] == 2
    c.close()
    c.close()  # idempotent
    assert fake.initialised == 0 and fake.calls["nvmlShutdown"] == 1
    assert c.closed
    with pytest.raises(ToolError, match="closed"):
        c.sample()


def test_snapshot_wraps_the_node(collector: NvmlCollector) -> None:
    snap = collector.snapshot()
    assert [g.gpu for g in snap.gpus] == ["node-1/gpu-0", "node-1/gpu-1"]
    assert snap.node("node-1") is not None and snap.node("node-1").gpus == 2  # type: ignore[union-attr]
    assert isinstance(collector, GpuSource)


def test_sample_node_argument_names_the_gpus(collector: NvmlCollector) -> None:
    assert collector.sample("node-9")[1].gpu == "node-9/gpu-1"


# ---------------------------------------------------------------------------------------- no GPU


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED])
def test_no_driver_raises_nvml_unavailable_with_the_message(fake: FakeNvml, code: int) -> None:
    fake.fail_init(code)
    with pytest.raises(NvmlUnavailable) as info:
        NvmlCollector.open(fake)
    assert str(info.value) == NVML_UNAVAILABLE_MESSAGE
    assert isinstance(info.value, ToolError)


def test_other_init_failures_say_why(fake: FakeNvml) -> None:
    fake.fail_init(pynvml.NVML_ERROR_NO_PERMISSION)
    with pytest.raises(NvmlUnavailable, match=r"^NVML not available .*NVMLError_NoPermission"):
        NvmlCollector(fake)


def test_no_gpu_shuts_the_session_down(fake: FakeNvml) -> None:
    fake.gpus.clear()
    with pytest.raises(NvmlUnavailable, match="no GPU"):
        NvmlCollector(fake)
    assert fake.initialised == 0


def test_open_gpu_source_falls_back_to_replay_with_the_message(
    fake: FakeNvml, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail_init()
    with caplog.at_level(logging.WARNING, logger="tools.telemetry.nvml"):
        source = open_gpu_source("node-4", nvml=fake, replay_gpus=3)
    assert isinstance(source, NvmlReplaySource)
    assert NVML_UNAVAILABLE_MESSAGE in caplog.text
    assert [s.gpu for s in source.sample()] == ["node-4/gpu-0", "node-4/gpu-1", "node-4/gpu-2"]


def test_open_gpu_source_uses_nvml_when_it_works(fake: FakeNvml) -> None:
    source = open_gpu_source("node-5", nvml=fake, watch_xids=False)
    try:
        assert isinstance(source, NvmlCollector)
        assert source.sample()[0].gpu == "node-5/gpu-0"
    finally:
        source.close()


def test_open_gpu_source_without_a_driver_here() -> None:
    """On this machine (no /dev/nvidia*), the real pynvml path must fall back, not crash."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has a working NVML; the fallback is covered with the fake")
    source = open_gpu_source("node-0")
    assert isinstance(source, NvmlReplaySource)
    with pytest.raises(NvmlUnavailable, match="NVML not available"):
        NvmlCollector.open()


# ---------------------------------------------------------------------------------------- XIDs


def test_xid_events_reach_the_next_sample(fake: FakeNvml, collector: NvmlCollector) -> None:
    assert collector.xids is not None and collector.xids.registered == (0, 1)
    fake.inject_xid(1, 48)
    fake.inject_xid(1, 63)
    fake.inject_xid(0, 31)
    wait_for(lambda: collector.xids is not None and collector.xids._queue.qsize() == 3)
    s0, s1 = collector.sample()
    assert s0.xids == [31] and s1.xids == [48, 63]
    assert [s.xids for s in collector.sample()] == [[], []]  # drained


def test_gpu_falling_off_the_bus_shows_xid_79_and_not_present(fake: FakeNvml, collector: NvmlCollector) -> None:
    fake.lose_gpu(0)  # XID 79, then GPU_IS_LOST
    wait_for(lambda: collector.xids is not None and not collector.xids._queue.empty())
    s0 = collector.sample()[0]
    assert s0.present is False and s0.xids == [79]


def test_xid_thread_stops_cleanly(fake: FakeNvml) -> None:
    before = threading.active_count()
    c = NvmlCollector(fake, node="n", xid_timeout_ms=20)
    watcher = c.xids
    assert watcher is not None and watcher.running
    time.sleep(0.07)  # a few timeouts: normal, not errors
    started = time.monotonic()
    c.close()
    assert time.monotonic() - started < 1.0
    assert not watcher.running and watcher.errors == 0
    assert threading.active_count() == before
    assert all(s.freed for s in fake.event_sets)
    assert fake.initialised == 0


def test_xid_queue_is_bounded_and_keeps_the_newest(fake: FakeNvml) -> None:
    fake.nvmlInit()
    watcher = XidWatcher(fake, [fake.nvmlDeviceGetHandleByIndex(0)], "n", timeout_ms=20, maxsize=3)
    watcher.start()
    try:
        for xid in range(10):
            fake.inject_xid(0, xid)
        wait_for(lambda: fake.event_sets[0].events.empty() and watcher.dropped == 7)
        assert [e.xid for e in watcher.drain()] == [7, 8, 9]
        assert watcher.drain() == []
    finally:
        watcher.stop()


def test_xid_events_carry_gpu_id_and_time(fake: FakeNvml) -> None:
    fake.nvmlInit()
    watcher = XidWatcher(fake, [fake.nvmlDeviceGetHandleByIndex(i) for i in range(2)], "node-7", timeout_ms=20)
    watcher.start()
    try:
        before = time.time()
        fake.inject_xid(1, 94)
        wait_for(lambda: not watcher._queue.empty())
        (event,) = watcher.drain()
        assert (event.gpu_id, event.gpu_index, event.xid) == ("node-7/gpu-1", 1, 94)
        assert before <= event.at <= time.time()
    finally:
        watcher.stop()


def test_xid_not_supported_still_samples(fake: FakeNvml) -> None:
    for gpu in fake.gpus:
        gpu.xid_supported = False
    with NvmlCollector(fake, node="n") as c:
        assert c.xids is not None and c.xids.registered == () and not c.xids.running
        assert len(c.sample()) == 2
    assert all(s.freed for s in fake.event_sets)


def test_xid_wait_errors_back_off_and_are_counted(fake: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_wait(event_set: object, timeout_ms: int) -> object:
        fake.calls["broken_wait"] += 1
        raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    monkeypatch.setattr(fake, "nvmlEventSetWait_v2", broken_wait)
    with NvmlCollector(fake, node="n", xid_timeout_ms=20) as c:
        time.sleep(0.1)
        assert c.xids is not None and c.xids.errors >= 1
        assert c.xids.last_error is not None and "Unknown" in c.xids.last_error
    assert fake.calls["broken_wait"] < 20  # backed off between tries instead of spinning
