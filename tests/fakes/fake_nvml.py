"""A scriptable stand-in for the `pynvml` module, built from the recorded H100 snapshot.

Layer: tools (adapters), test support. Imports only the stdlib and `pynvml` (for its constants and its
exception classes, so the collector's `except pynvml.NVMLError_NotSupported` clauses are exercised exactly
as on a real GPU; `nvidia-ml-py` imports fine without a driver).

`FakeNvml.from_snapshot(gpus=N)` gives N identical H100s answering every call the collector makes with the
values in `data/nvml_snapshot_h100.json`. What the snapshot recorded as NOT_SUPPORTED (NVLink, fan, retired
pages) raises `NVMLError_NotSupported`; so does anything the snapshot did not record, which is how an
older or smaller GPU behaves. Hooks change the world between samples:

    fake.set_utilization(0, gpu=100)     fake.set_ecc(0, uncorrected_volatile=2)
    fake.lose_gpu(3)                     fake.inject_xid(1, 79)
    fake.set_not_supported(0, "temperature_gpu")   fake.enable_nvlink(0, links=18, crc=5)

Only the functions the collector uses exist; anything else raises AttributeError, as a `pynvml` too old to
have it would. `calls` counts every call by function name.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml  # type: ignore[import-untyped]

from tools.telemetry.replay import load_snapshot

# Names forwarded from the real module: constants and the exception classes, never functions.
_FORWARDED_PREFIXES = ("NVML_", "NVMLError", "nvmlEventType", "nvmlClocksEventReason", "nvmlClocksThrottleReason")

_REASONS_KEY = "clocks_event_reasons(nvmlDeviceGetCurrentClocksEventReasons)"
_THROTTLE_KEY = "clocks_event_reasons(nvmlDeviceGetCurrentClocksThrottleReasons)"
_ECC_KEYS = {
    (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC): "ecc_corrected_volatile",
    (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC): "ecc_uncorrected_volatile",
    (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_AGGREGATE_ECC): "ecc_corrected_aggregate",
    (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_AGGREGATE_ECC): "ecc_uncorrected_aggregate",
}
_CLOCK_KEYS = {pynvml.NVML_CLOCK_SM: "clock_sm_mhz", pynvml.NVML_CLOCK_MEM: "clock_mem_mhz"}


@dataclass(frozen=True)
class FakeHandle:
    """What nvmlDeviceGetHandleByIndex returns: opaque to the collector, carries the index for the fake."""

    index: int


@dataclass
class FakeGpu:
    """One GPU's state: snapshot call values by the snapshot's call names, plus what the hooks changed."""

    index: int
    values: dict[str, Any]
    errors: dict[str, int]  # call name -> NVML error code it raises (3 = NOT_SUPPORTED)
    fields: dict[int, dict[str, Any]]  # field id -> recorded field value entry
    lost: bool = False
    xid_supported: bool = True
    nvlink: dict[int, dict[int, int]] = field(default_factory=dict)  # link -> counter -> value


class _EventSet:
    def __init__(self) -> None:
        self.events: queue.Queue[SimpleNamespace] = queue.Queue()
        self.devices: dict[int, int] = {}  # index -> event type mask
        self.freed = False


class FakeNvml:
    """The `pynvml` surface the collector uses, answering from recorded H100 values."""

    def __init__(self, gpus: Iterable[FakeGpu], snapshot: dict[str, Any]) -> None:
        self.gpus = list(gpus)
        self.snapshot = snapshot
        self.calls: Counter[str] = Counter()
        self.initialised = 0  # nvmlInit minus nvmlShutdown, as NVML's reference count
        self.init_error: int | None = None  # error code the next nvmlInit raises
        self.event_sets: list[_EventSet] = []
        self._lock = threading.Lock()

    @classmethod
    def from_snapshot(cls, gpus: int = 1, snapshot: dict[str, Any] | None = None) -> FakeNvml:
        snap = snapshot if snapshot is not None else load_snapshot()
        return cls([_gpu_from_snapshot(i, snap) for i in range(gpus)], snap)

    def __getattr__(self, name: str) -> Any:
        # Constants and exception classes come from the real bindings so `except nv.NVMLError_X` matches.
        if name.startswith(_FORWARDED_PREFIXES):
            return getattr(pynvml, name)
        raise AttributeError(f"FakeNvml has no {name!r} (the collector should treat it as absent)")

    # ------------------------------------------------------------------------------------ hooks

    def fail_init(self, code: int = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND) -> None:
        """Make nvmlInit raise NVMLError(code): LIBRARY_NOT_FOUND is 'no driver installed'."""
        self.init_error = code

    def set_value(self, index: int, call: str, value: Any) -> None:
        """Set a snapshot call's value (e.g. "temperature_gpu", "power_usage_mw"); makes it supported."""
        gpu = self.gpus[index]
        gpu.values[call] = value
        gpu.errors.pop(call, None)

    def set_not_supported(self, index: int, call: str) -> None:
        self.set_error(index, call, pynvml.NVML_ERROR_NOT_SUPPORTED)

    def set_error(self, index: int, call: str, code: int) -> None:
        """Make a snapshot call (by its snapshot name) raise NVMLError(code) until set_value."""
        self.gpus[index].errors[call] = code

    def set_utilization(self, index: int, gpu: int | None = None, memory: int | None = None) -> None:
        util = dict(self.gpus[index].values["utilization"])
        util.update({k: v for k, v in (("gpu", gpu), ("memory", memory)) if v is not None})
        self.set_value(index, "utilization", util)

    def set_memory_used(self, index: int, used_bytes: int) -> None:
        mem = dict(self.gpus[index].values["memory_info"])
        mem["used"] = used_bytes
        mem["free"] = mem["total"] - used_bytes
        self.set_value(index, "memory_info", mem)

    def set_clock_reasons(self, index: int, reasons: int) -> None:
        self.set_value(index, _REASONS_KEY, reasons)
        self.set_value(index, _THROTTLE_KEY, reasons)

    def set_ecc(
        self,
        index: int,
        *,
        corrected_volatile: int | None = None,
        uncorrected_volatile: int | None = None,
        corrected_aggregate: int | None = None,
        uncorrected_aggregate: int | None = None,
    ) -> None:
        for key, value in (
            ("ecc_corrected_volatile", corrected_volatile),
            ("ecc_uncorrected_volatile", uncorrected_volatile),
            ("ecc_corrected_aggregate", corrected_aggregate),
            ("ecc_uncorrected_aggregate", uncorrected_aggregate),
        ):
            if value is not None:
                self.set_value(index, key, value)

    def set_remapped_rows(
        self, index: int, correctable: int = 0, uncorrectable: int = 0, pending: bool = False, failure: bool = False
    ) -> None:
        self.set_value(index, "remapped_rows", [correctable, uncorrectable, int(pending), int(failure)])

    def set_processes(self, index: int, pids: Iterable[int]) -> None:
        self.set_value(index, "compute_processes", [{"pid": p, "usedGpuMemory": 0} for p in pids])

    def enable_nvlink(self, index: int, links: int = 18, crc: int = 0, replay: int = 0) -> None:
        """Give the GPU `links` NVLinks; `crc`/`replay` errors are put on link 0 (CRC as data CRC)."""
        gpu = self.gpus[index]
        gpu.nvlink = {link: {c: 0 for c in range(pynvml.NVML_NVLINK_ERROR_COUNT)} for link in range(links)}
        gpu.nvlink[0][pynvml.NVML_NVLINK_ERROR_DL_CRC_DATA] = crc
        gpu.nvlink[0][pynvml.NVML_NVLINK_ERROR_DL_REPLAY] = replay

    def lose_gpu(self, index: int, xid: int | None = 79) -> None:
        """The GPU falls off the bus: every call on it raises GPU_IS_LOST. XID 79 is what the driver
        reports for that, so it is delivered first unless `xid` is None."""
        if xid is not None:
            self.inject_xid(index, xid)
        self.gpus[index].lost = True

    def recover_gpu(self, index: int) -> None:
        self.gpus[index].lost = False

    def inject_xid(self, index: int, xid: int) -> None:
        """Deliver an XID critical-error event for GPU `index` to every event set it is registered with."""
        with self._lock:
            for event_set in self.event_sets:
                mask = event_set.devices.get(index, 0)
                if mask & pynvml.nvmlEventTypeXidCriticalError and not event_set.freed:
                    event_set.events.put(
                        SimpleNamespace(
                            device=FakeHandle(index),
                            eventType=pynvml.nvmlEventTypeXidCriticalError,
                            eventData=xid,
                            gpuInstanceId=0xFFFFFFFF,
                            computeInstanceId=0xFFFFFFFF,
                        )
                    )

    # ------------------------------------------------------------------------------------ internals

    def _count(self, name: str) -> None:
        self.calls[name] += 1
        if self.initialised <= 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def _gpu(self, name: str, handle: FakeHandle) -> FakeGpu:
        self._count(name)
        gpu = self.gpus[handle.index]
        if gpu.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return gpu

    def _value(self, name: str, handle: FakeHandle, key: str) -> Any:
        gpu = self._gpu(name, handle)
        if key in gpu.errors:
            raise pynvml.NVMLError(gpu.errors[key])
        if key not in gpu.values:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return copy.deepcopy(gpu.values[key])

    # ------------------------------------------------------------------------------------ the pynvml API

    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self._count("nvmlShutdown")
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._count("nvmlSystemGetDriverVersion")
        return str(self.snapshot.get("driver_version", ""))

    def nvmlDeviceGetCount(self) -> int:
        self._count("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._count("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if self.gpus[index].lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return FakeHandle(index)

    def nvmlDeviceGetIndex(self, handle: FakeHandle) -> int:
        self._count("nvmlDeviceGetIndex")
        return handle.index

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        return str(self._value("nvmlDeviceGetName", handle, "name"))

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> SimpleNamespace:
        return SimpleNamespace(**self._value("nvmlDeviceGetUtilizationRates", handle, "utilization"))

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle, version: int | None = None) -> SimpleNamespace:
        return SimpleNamespace(**self._value("nvmlDeviceGetMemoryInfo", handle, "memory_info"))

    def nvmlDeviceGetTemperature(self, handle: FakeHandle, sensor: int) -> int:
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return int(self._value("nvmlDeviceGetTemperature", handle, "temperature_gpu"))

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        return int(self._value("nvmlDeviceGetPowerUsage", handle, "power_usage_mw"))

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeHandle) -> int:
        return int(self._value("nvmlDeviceGetEnforcedPowerLimit", handle, "enforced_power_limit_mw"))

    def nvmlDeviceGetClockInfo(self, handle: FakeHandle, clock_type: int) -> int:
        key = _CLOCK_KEYS.get(clock_type, f"clock_{clock_type}")
        return int(self._value("nvmlDeviceGetClockInfo", handle, key))

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeHandle) -> int:
        return int(self._value("nvmlDeviceGetCurrentClocksEventReasons", handle, _REASONS_KEY))

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeHandle) -> int:
        return int(self._value("nvmlDeviceGetCurrentClocksThrottleReasons", handle, _THROTTLE_KEY))

    def nvmlDeviceGetTotalEccErrors(self, handle: FakeHandle, error_type: int, counter_type: int) -> int:
        key = _ECC_KEYS.get((error_type, counter_type), "ecc_unknown")
        return int(self._value("nvmlDeviceGetTotalEccErrors", handle, key))

    def nvmlDeviceGetRemappedRows(self, handle: FakeHandle) -> tuple[int, int, int, int]:
        cor, unc, pending, failure = self._value("nvmlDeviceGetRemappedRows", handle, "remapped_rows")
        return int(cor), int(unc), int(pending), int(failure)

    def nvmlDeviceGetPcieReplayCounter(self, handle: FakeHandle) -> int:
        return int(self._value("nvmlDeviceGetPcieReplayCounter", handle, "pcie_replay_counter"))

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> list[SimpleNamespace]:
        procs = self._value("nvmlDeviceGetComputeRunningProcesses", handle, "compute_processes")
        return [SimpleNamespace(gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF, **p) for p in procs]

    def nvmlDeviceGetNvLinkState(self, handle: FakeHandle, link: int) -> int:
        gpu = self._gpu("nvmlDeviceGetNvLinkState", handle)
        if not gpu.nvlink:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)  # as recorded: nvlink_state_0
        if link not in gpu.nvlink:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return int(pynvml.NVML_FEATURE_ENABLED)

    def nvmlDeviceGetNvLinkErrorCounter(self, handle: FakeHandle, link: int, counter: int) -> int:
        gpu = self._gpu("nvmlDeviceGetNvLinkErrorCounter", handle)
        if not gpu.nvlink:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if link not in gpu.nvlink or counter not in gpu.nvlink[link]:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.nvlink[link][counter]

    def nvmlDeviceGetFieldValues(self, handle: FakeHandle, field_ids: Iterable[int]) -> list[SimpleNamespace]:
        gpu = self._gpu("nvmlDeviceGetFieldValues", handle)
        out = []
        for field_id in field_ids:
            entry = gpu.fields.get(int(field_id))
            if entry is None:  # not recorded: answer as a GPU without that field would
                entry = {"nvmlReturn": pynvml.NVML_ERROR_NOT_SUPPORTED, "valueType": 0, "value": {}}
            value = {m: 0 for m in ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")}
            value.update(entry["value"])
            out.append(
                SimpleNamespace(
                    fieldId=int(field_id),
                    scopeId=0,
                    timestamp=0,
                    latencyUsec=0,
                    valueType=entry["valueType"],
                    nvmlReturn=entry["nvmlReturn"],
                    value=SimpleNamespace(**value),
                )
            )
        return out

    def set_field(self, index: int, name: str, value: float | None) -> None:
        """Set an NVML_FI_DEV_* field (by name) to an unsigned value, or to NOT_SUPPORTED with None."""
        field_id = int(getattr(pynvml, name))
        if value is None:
            self.gpus[index].fields[field_id] = {"nvmlReturn": 3, "valueType": 0, "value": {}}
        elif isinstance(value, float):
            self.gpus[index].fields[field_id] = {"nvmlReturn": 0, "valueType": 0, "value": {"dVal": value}}
        else:
            self.gpus[index].fields[field_id] = {"nvmlReturn": 0, "valueType": 3, "value": {"ullVal": value}}

    def nvmlEventSetCreate(self) -> _EventSet:
        self._count("nvmlEventSetCreate")
        event_set = _EventSet()
        with self._lock:
            self.event_sets.append(event_set)
        return event_set

    def nvmlDeviceRegisterEvents(self, handle: FakeHandle, event_types: int, event_set: _EventSet) -> None:
        gpu = self._gpu("nvmlDeviceRegisterEvents", handle)
        if not gpu.xid_supported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        with self._lock:
            event_set.devices[handle.index] = event_set.devices.get(handle.index, 0) | event_types

    def nvmlEventSetWait_v2(self, event_set: _EventSet, timeout_ms: int) -> SimpleNamespace:
        self._count("nvmlEventSetWait_v2")
        if event_set.freed:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        try:
            return event_set.events.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT) from None

    def nvmlEventSetWait(self, event_set: _EventSet, timeout_ms: int) -> SimpleNamespace:
        return self.nvmlEventSetWait_v2(event_set, timeout_ms)

    def nvmlEventSetFree(self, event_set: _EventSet) -> None:
        self._count("nvmlEventSetFree")
        event_set.freed = True


def _gpu_from_snapshot(index: int, snap: dict[str, Any]) -> FakeGpu:
    values: dict[str, Any] = {}
    errors: dict[str, int] = {}
    for name, entry in snap.get("calls", {}).items():
        if entry.get("ok"):
            values[name] = copy.deepcopy(entry["value"])
        elif "NotSupported" in str(entry.get("value")):
            errors[name] = pynvml.NVML_ERROR_NOT_SUPPORTED
        else:
            errors[name] = pynvml.NVML_ERROR_UNKNOWN
    fields: dict[int, dict[str, Any]] = {}
    for name, entry in snap.get("field_values", {}).items():
        field_id = getattr(pynvml, name, None)
        if field_id is not None:
            fields[int(field_id)] = copy.deepcopy(entry)
    xid = snap.get("xid_events", {})
    return FakeGpu(
        index=index,
        values=values,
        errors=errors,
        fields=fields,
        xid_supported=bool(xid.get("register_xid", False)),
    )
