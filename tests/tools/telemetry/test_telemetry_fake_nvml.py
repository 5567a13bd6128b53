"""The fake NVML answers like the recorded H100, with the real pynvml exception classes."""

from __future__ import annotations

import pynvml  # type: ignore[import-untyped]
import pytest
from fakes.fake_nvml import FakeNvml


@pytest.fixture
def nv() -> FakeNvml:
    fake = FakeNvml.from_snapshot(gpus=1)
    fake.nvmlInit()
    return fake


def test_values_from_the_snapshot(nv: FakeNvml) -> None:
    h = nv.nvmlDeviceGetHandleByIndex(0)
    assert nv.nvmlDeviceGetName(h) == "NVIDIA H100 80GB HBM3"
    assert nv.nvmlDeviceGetPowerUsage(h) == 72029
    assert nv.nvmlDeviceGetMemoryInfo(h).total == 85520809984
    assert nv.nvmlDeviceGetRemappedRows(h) == (0, 0, 0, 0)
    (temp,) = nv.nvmlDeviceGetFieldValues(h, [pynvml.NVML_FI_DEV_MEMORY_TEMP])
    assert (temp.nvmlReturn, temp.value.uiVal) == (0, 38)


def test_not_supported_raises_the_real_exception_class(nv: FakeNvml) -> None:
    h = nv.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nv.nvmlDeviceGetNvLinkState(h, 0)
    (crc,) = nv.nvmlDeviceGetFieldValues(h, [pynvml.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL])
    assert crc.nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
    with pytest.raises(pynvml.NVMLError_NotSupported):  # not recorded: treated as not supported
        nv.nvmlDeviceGetTotalEccErrors(h, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_AGGREGATE_ECC)


def test_lost_gpu_and_uninitialised(nv: FakeNvml) -> None:
    h = nv.nvmlDeviceGetHandleByIndex(0)
    nv.lose_gpu(0)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        nv.nvmlDeviceGetUtilizationRates(h)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        nv.nvmlDeviceGetHandleByIndex(0)
    nv.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nv.nvmlDeviceGetCount()


def test_events(nv: FakeNvml) -> None:
    h = nv.nvmlDeviceGetHandleByIndex(0)
    event_set = nv.nvmlEventSetCreate()
    nv.nvmlDeviceRegisterEvents(h, pynvml.nvmlEventTypeXidCriticalError, event_set)
    with pytest.raises(pynvml.NVMLError_Timeout):
        nv.nvmlEventSetWait_v2(event_set, 1)
    nv.inject_xid(0, 13)
    data = nv.nvmlEventSetWait_v2(event_set, 100)
    assert (data.eventType, data.eventData, nv.nvmlDeviceGetIndex(data.device)) == (
        pynvml.nvmlEventTypeXidCriticalError, 13, 0
    )
    nv.nvmlEventSetFree(event_set)


def test_only_the_used_surface_exists(nv: FakeNvml) -> None:
    assert nv.NVML_CLOCK_SM == pynvml.NVML_CLOCK_SM
    assert nv.NVMLError_NotSupported is pynvml.NVMLError_NotSupported
    with pytest.raises(AttributeError):
        nv.nvmlDeviceGetFanSpeed  # noqa: B018 - the lookup itself is the test
