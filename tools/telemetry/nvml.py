"""NVML collector: per-GPU health readings and XID events from the NVIDIA driver, through `nvidia-ml-py`.

Layer: tools (adapters). Imports only `core.domain`, `core.errors`, the stdlib and, lazily,
`pynvml` (the import name of `nvidia-ml-py`), so that importing this module costs nothing on machines
without a GPU. The nvml module is an injectable dependency: tests pass `fakes.fake_nvml.FakeNvml`,
production passes nothing and gets the real `pynvml`.

Design points, all from the H100 readings in `tools/telemetry/data/` (see the README beside the originals):

- One NVML session per collector: `nvmlInit` costs ~13 ms and the first (cold) call of a kind can take
  milliseconds, while warm calls take microseconds. Handles are looked up once and kept.
- NOT_SUPPORTED (and NO_PERMISSION, FUNCTION_NOT_FOUND, or a binding too old to have the function) means
  "absent": the field is `None`, never an error. Support does not change while the driver is loaded, so an
  absent call is remembered per GPU and never made again; that keeps warm samples cheap on GPUs (like the
  PCIe H100 recorded) where a dozen NVLink calls would fail every tick.
- NVML_ERROR_GPU_IS_LOST at any point turns the whole reading into `present=False` (the GPU fell off the
  bus); any other NVML error leaves that one field `None` and is counted, so a flaky call never crashes
  the monitor.
- The PCIe replay counter is the one slow call: ~170 us alone and ~370 us inside a sample on the H100
  (measured: a whole warm sample is ~450 us with it, ~70 us without), and it is a cumulative counter that
  moves rarely. It is therefore read at most every `slow_interval_s` (default 10 s) per GPU and the last
  value reused in between; `slow_interval_s=0` reads it every sample.
- XID events (`nvmlEventTypeXidCriticalError`) arrive on a daemon thread (`XidWatcher`) blocked in
  `nvmlEventSetWait_v2` with a timeout; they wait in a bounded queue until the next `sample()`, which puts
  them on the GPU's `GpuSample.xids`.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple, Self

from core.domain import ClusterSnapshot, GpuSample
from core.errors import PermanentToolError, ToolError
from tools.telemetry.source import GpuSource, node_snapshot

log = logging.getLogger(__name__)

NVML_UNAVAILABLE_MESSAGE = "NVML not available (no NVIDIA driver/GPU): use the recorded or sandbox source"

# pynvml ships no type information and the fake mirrors its surface, so the module is typed as Any here;
# every value read from it is converted to a plain int/float/bool before it leaves this module.
NvmlModule = Any

_MIB = 1024 * 1024

# NVML field value types (nvmlValueType_t) -> the member of the nvmlValue_t union that holds the value.
_VALUE_MEMBER = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}


class NvmlUnavailable(PermanentToolError):
    """NVML cannot be used here (no driver, no GPU, no bindings). Retrying will not help: fall back to
    the recorded trace (`tools.telemetry.replay`) or the sandbox."""


class _GpuLost(Exception):
    """Internal: NVML said GPU_IS_LOST while reading one GPU; the reading becomes `present=False`."""


class XidEvent(NamedTuple):
    gpu_id: str  # node/gpu-N, or node/gpu-? when NVML could not say which device it came from
    gpu_index: int  # NVML device index, -1 when unknown
    xid: int
    at: float  # wall-clock seconds (time.time()) when the watcher received it


def import_pynvml() -> NvmlModule:
    """Import the real bindings, translating their absence into `NvmlUnavailable`."""
    try:
        import pynvml  # type: ignore[import-untyped]
    except ImportError as exc:  # the dependency is declared, but a trimmed install may lack it
        raise NvmlUnavailable(f"{NVML_UNAVAILABLE_MESSAGE} (nvidia-ml-py is not installed)") from exc
    return pynvml


def _absent_errors(nv: NvmlModule) -> tuple[type[BaseException], ...]:
    # "This GPU/driver cannot tell you" in its three spellings; all mean the field is absent.
    return (nv.NVMLError_NotSupported, nv.NVMLError_NoPermission, nv.NVMLError_FunctionNotFound)


# --------------------------------------------------------------------------------------------------
# XID events
# --------------------------------------------------------------------------------------------------


class XidWatcher:
    """Waits for XID critical-error events on a daemon thread and queues them for the sampler.

    Usage: `XidWatcher(nvml, handles, node).start()`, `drain()` from the sampler, `stop()` when done.
    The NVML session must stay initialised while the watcher runs (the collector stops it before
    `nvmlShutdown`). The queue is bounded so that an XID storm cannot grow memory without limit; when it
    is full the oldest event is dropped (the newest says most about the GPU's state now) and counted.
    """

    def __init__(
        self,
        nvml: NvmlModule,
        handles: Sequence[Any | None],
        node: str,
        *,
        timeout_ms: int = 500,
        maxsize: int = 1024,
    ) -> None:
        self._nv = nvml
        self._node = node
        self._timeout_ms = timeout_ms
        self._queue: queue.Queue[XidEvent] = queue.Queue(maxsize=maxsize)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_set: Any = None
        self._handles = list(handles)
        self.registered: tuple[int, ...] = ()
        self.dropped = 0  # events lost to a full queue
        self.errors = 0  # unexpected NVML errors while waiting (timeouts are not errors)
        self.last_error: str | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> XidWatcher:
        """Register every GPU that supports XID events and start the thread (if any GPU registered)."""
        if self._thread is not None:
            return self
        nv = self._nv
        unsupported: tuple[type[BaseException], ...] = (AttributeError, *_absent_errors(nv))
        try:
            self._event_set = nv.nvmlEventSetCreate()
        except unsupported as exc:
            log.info("XID events not supported by this driver: %s", exc)
            return self
        registered: list[int] = []
        refused: tuple[type[BaseException], ...] = (*_absent_errors(nv), nv.NVMLError_GpuIsLost)
        for index, handle in enumerate(self._handles):
            if handle is None:
                continue
            try:
                nv.nvmlDeviceRegisterEvents(handle, nv.nvmlEventTypeXidCriticalError, self._event_set)
            except refused as exc:
                # vGPU guests and some MIG setups refuse XID registration; the GPU is still sampled.
                log.info("XID events not available for %s/gpu-%d: %s", self._node, index, exc)
                continue
            registered.append(index)
        self.registered = tuple(registered)
        if not registered:
            self._free_set()
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"xid-watcher-{self._node}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop the thread and free the event set. Idempotent."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            # The thread notices the flag after at most one wait timeout.
            thread.join(timeout_s if timeout_s is not None else self._timeout_ms / 1000 + 2.0)
            if thread.is_alive():
                # Freeing the set under a thread still blocked in nvmlEventSetWait would be a
                # use-after-free in the driver library; leaking one set is the lesser harm.
                log.warning("XID watcher for %s did not stop in time; event set not freed", self._node)
                return
        self._free_set()

    def drain(self) -> list[XidEvent]:
        """Every event queued since the last drain, oldest first. Never blocks."""
        events: list[XidEvent] = []
        while True:
            try:
                events.append(self._queue.get_nowait())
            except queue.Empty:
                return events

    def _free_set(self) -> None:
        if self._event_set is None:
            return
        event_set, self._event_set = self._event_set, None
        try:
            self._nv.nvmlEventSetFree(event_set)
        except Exception as exc:  # noqa: BLE001 - cleanup must not raise; the session is going away anyway
            log.debug("nvmlEventSetFree failed: %s", exc)

    def _run(self) -> None:
        nv = self._nv
        wait: Callable[[Any, int], Any] = getattr(nv, "nvmlEventSetWait_v2", None) or nv.nvmlEventSetWait
        xid_type = int(nv.nvmlEventTypeXidCriticalError)
        while not self._stop.is_set():
            try:
                data = wait(self._event_set, self._timeout_ms)
            except nv.NVMLError_Timeout:
                continue  # the normal case: no XID during this interval
            except nv.NVMLError_FunctionNotFound:
                if wait is nv.nvmlEventSetWait:
                    self._record_error("nvmlEventSetWait not found")
                    return
                wait = nv.nvmlEventSetWait  # older driver: only the v1 entry point exists
                continue
            except nv.NVMLError as exc:
                self._record_error(f"{type(exc).__name__}: {exc}")
                # Back off for one interval rather than spin if the error repeats (e.g. a lost GPU).
                self._stop.wait(self._timeout_ms / 1000)
                continue
            if not int(data.eventType) & xid_type:
                continue
            self._put(self._event_from(data))

    def _event_from(self, data: Any) -> XidEvent:
        index = -1
        try:
            index = int(self._nv.nvmlDeviceGetIndex(data.device))
        except Exception as exc:  # noqa: BLE001 - an unattributed XID is still worth reporting
            log.warning("XID %s on %s from an unknown device: %s", data.eventData, self._node, exc)
        gpu_id = f"{self._node}/gpu-{index}" if index >= 0 else f"{self._node}/gpu-?"
        return XidEvent(gpu_id=gpu_id, gpu_index=index, xid=int(data.eventData), at=time.time())

    def _put(self, event: XidEvent) -> None:
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _record_error(self, message: str) -> None:
        self.errors += 1
        if message != self.last_error:  # log each distinct error once, not once per interval
            log.warning("XID watcher on %s: %s", self._node, message)
        self.last_error = message


# --------------------------------------------------------------------------------------------------
# The collector
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Device:
    index: int
    handle: Any | None  # None while NVML cannot give a handle (GPU lost at open)
    absent: set[tuple[Any, ...]] = field(default_factory=set)  # (call, *args) known NOT_SUPPORTED & co
    nvlinks: list[int] | None = None  # links that answer, probed on first sample
    reasons_call: str = "nvmlDeviceGetCurrentClocksEventReasons"
    pcie_replay: int | None = None  # last PCIe replay counter read (a slow call: see the module docstring)
    pcie_read_at: float = float("-inf")  # time.monotonic() of that read


@dataclass(frozen=True, slots=True)
class NvmlReading:
    """A `GpuSample` plus what NVML gave that `GpuSample` has no field for, and how long it took."""

    sample: GpuSample
    mem_temp_c: float | None = None  # HBM temperature (NVML_FI_DEV_MEMORY_TEMP)
    read_us: float = 0.0
    errors: tuple[str, ...] = ()  # unexpected NVML errors this reading (field left None)

    @property
    def absent(self) -> tuple[str, ...]:
        """Names of the fields NVML did not provide (None), `mem_temp_c` included."""
        names = [k for k, v in self.sample if v is None]
        if self.mem_temp_c is None:
            names.append("mem_temp_c")
        return tuple(names)


class NvmlCollector:
    """One NVML session over all GPUs of this machine. Thread-safe; `close()` or use as a context manager.

    `NvmlCollector()` (or `NvmlCollector.open()`) initialises NVML and raises `NvmlUnavailable` with
    `NVML_UNAVAILABLE_MESSAGE` when there is no driver or no GPU.
    """

    def __init__(
        self,
        nvml: NvmlModule | None = None,
        *,
        node: str | None = None,
        watch_xids: bool = True,
        xid_timeout_ms: int = 500,
        xid_queue_size: int = 1024,
        slow_interval_s: float = 10.0,
    ) -> None:
        self._nv: NvmlModule = nvml if nvml is not None else import_pynvml()
        self.node = node or socket.gethostname()
        self.slow_interval_s = slow_interval_s
        self._lock = threading.Lock()
        self._closed = False
        self.init_ms = 0.0
        self.errors = 0  # unexpected NVML errors over the collector's life
        nv = self._nv
        started = time.perf_counter()
        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            raise self._unavailable(exc) from exc
        self.init_ms = (time.perf_counter() - started) * 1000
        try:
            count = int(nv.nvmlDeviceGetCount())
            if count == 0:
                raise NvmlUnavailable(f"{NVML_UNAVAILABLE_MESSAGE} (the driver reports no GPU)")
            self._devices = [self._open_device(i) for i in range(count)]
        except nv.NVMLError as exc:
            self._shutdown()
            raise self._unavailable(exc) from exc
        except BaseException:
            self._shutdown()
            raise
        self.xids: XidWatcher | None = None
        if watch_xids:
            self.xids = XidWatcher(
                nv,
                [d.handle for d in self._devices],
                self.node,
                timeout_ms=xid_timeout_ms,
                maxsize=xid_queue_size,
            ).start()

    @classmethod
    def open(cls, nvml: NvmlModule | None = None, **kwargs: Any) -> NvmlCollector:
        """Same as the constructor; reads better at call sites (`with NvmlCollector.open() as c:`)."""
        return cls(nvml, **kwargs)

    # ---------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the XID thread, then shut NVML down. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.xids is not None:
            self.xids.stop()  # before nvmlShutdown: the thread uses the event set
        self._shutdown()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def gpu_count(self) -> int:
        return len(self._devices)

    def _shutdown(self) -> None:
        try:
            self._nv.nvmlShutdown()
        except Exception as exc:  # noqa: BLE001 - nothing useful to do if shutdown itself fails
            log.debug("nvmlShutdown failed: %s", exc)

    def _unavailable(self, exc: BaseException) -> NvmlUnavailable:
        nv = self._nv
        if isinstance(exc, (nv.NVMLError_LibraryNotFound, nv.NVMLError_DriverNotLoaded)):
            return NvmlUnavailable(NVML_UNAVAILABLE_MESSAGE)
        return NvmlUnavailable(f"{NVML_UNAVAILABLE_MESSAGE} ({type(exc).__name__}: {exc})")

    def _open_device(self, index: int) -> _Device:
        nv = self._nv
        try:
            return _Device(index, nv.nvmlDeviceGetHandleByIndex(index))
        except nv.NVMLError_GpuIsLost:
            log.warning("%s/gpu-%d is lost (fell off the bus?)", self.node, index)
            return _Device(index, None)

    # ---------------------------------------------------------------------------------- sampling

    def sample(self, node: str | None = None) -> list[GpuSample]:
        """One `GpuSample` per GPU, in index order; XIDs received since the last call included."""
        return [r.sample for r in self.read(node)]

    def snapshot(self) -> ClusterSnapshot:
        return node_snapshot(self.node, self.sample(), time.time())

    def read(self, node: str | None = None) -> list[NvmlReading]:
        """Like `sample`, with the extras (HBM temperature, per-GPU read time, errors)."""
        node = node or self.node
        with self._lock:
            if self._closed:
                raise ToolError("NVML collector is closed")
            xids: dict[int, list[int]] = {}
            if self.xids is not None:
                for event in self.xids.drain():
                    if event.gpu_index < 0:
                        log.warning("XID %d on %s not attributed to a GPU", event.xid, event.gpu_id)
                        continue
                    xids.setdefault(event.gpu_index, []).append(event.xid)
            return [self._read_device(d, node, xids.get(d.index, [])) for d in self._devices]

    def _read_device(self, dev: _Device, node: str, xids: list[int]) -> NvmlReading:
        started = time.perf_counter()
        gpu_id = f"{node}/gpu-{dev.index}"
        errors: list[str] = []
        try:
            if dev.handle is None:
                # Lost at open (or earlier): a reset can bring it back, so ask again each sample.
                dev.handle = self._reacquire_handle(dev)
            values, mem_temp = self._read_values(dev, errors)
        except _GpuLost:
            sample = GpuSample(gpu=gpu_id, node=node, index=dev.index, present=False, xids=xids)
            return NvmlReading(sample, read_us=(time.perf_counter() - started) * 1e6, errors=tuple(errors))
        sample = GpuSample(gpu=gpu_id, node=node, index=dev.index, xids=xids, **values)
        return NvmlReading(
            sample,
            mem_temp_c=mem_temp,
            read_us=(time.perf_counter() - started) * 1e6,
            errors=tuple(errors),
        )

    def _reacquire_handle(self, dev: _Device) -> Any:
        nv = self._nv
        try:
            return nv.nvmlDeviceGetHandleByIndex(dev.index)
        except nv.NVMLError as exc:
            raise _GpuLost from exc

    def _call(self, dev: _Device, errors: list[str], name: str, *args: Any) -> Any:
        """Call `name(handle, *args)`; None when absent (remembered) or on an unexpected error (counted)."""
        key = (name, *args)
        if key in dev.absent:
            return None
        nv = self._nv
        fn = getattr(nv, name, None)
        if fn is None:  # bindings older than the call: as absent as NOT_SUPPORTED
            dev.absent.add(key)
            return None
        try:
            return fn(dev.handle, *args)
        except nv.NVMLError_GpuIsLost as exc:
            raise _GpuLost from exc
        except _absent_errors(nv):
            dev.absent.add(key)
            return None
        except nv.NVMLError as exc:
            self.errors += 1
            errors.append(f"{name}{args}: {type(exc).__name__}")
            return None

    def _read_values(self, dev: _Device, errors: list[str]) -> tuple[dict[str, Any], float | None]:
        nv = self._nv
        call = self._call
        v: dict[str, Any] = {}

        util = call(dev, errors, "nvmlDeviceGetUtilizationRates")
        if util is not None:
            v["util_pct"] = float(util.gpu)
            v["mem_util_pct"] = float(util.memory)
        mem = call(dev, errors, "nvmlDeviceGetMemoryInfo")
        if mem is not None:
            v["mem_used_mib"] = mem.used / _MIB
            v["mem_total_mib"] = mem.total / _MIB
        v["temp_c"] = _float(call(dev, errors, "nvmlDeviceGetTemperature", nv.NVML_TEMPERATURE_GPU))
        power_mw = call(dev, errors, "nvmlDeviceGetPowerUsage")
        v["power_w"] = power_mw / 1000 if power_mw is not None else None
        limit_mw = call(dev, errors, "nvmlDeviceGetEnforcedPowerLimit")
        v["power_limit_w"] = limit_mw / 1000 if limit_mw is not None else None
        v["sm_clock_mhz"] = _float(call(dev, errors, "nvmlDeviceGetClockInfo", nv.NVML_CLOCK_SM))
        v["mem_clock_mhz"] = _float(call(dev, errors, "nvmlDeviceGetClockInfo", nv.NVML_CLOCK_MEM))

        reasons = call(dev, errors, dev.reasons_call)
        if reasons is None and (dev.reasons_call,) in dev.absent:
            # Drivers before r535 only have the older name for the same bit mask.
            dev.reasons_call = "nvmlDeviceGetCurrentClocksThrottleReasons"
            reasons = call(dev, errors, dev.reasons_call)
        v["clock_event_reasons"] = _int(reasons)

        ecc = "nvmlDeviceGetTotalEccErrors"
        corrected, uncorrected = nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
        v["ecc_sbe_volatile"] = _int(call(dev, errors, ecc, corrected, nv.NVML_VOLATILE_ECC))
        v["ecc_dbe_volatile"] = _int(call(dev, errors, ecc, uncorrected, nv.NVML_VOLATILE_ECC))
        v["ecc_dbe_aggregate"] = _int(call(dev, errors, ecc, uncorrected, nv.NVML_AGGREGATE_ECC))

        rows = call(dev, errors, "nvmlDeviceGetRemappedRows")
        if rows is not None:
            cor, unc, pending, failure = rows
            v["remapped_rows_correctable"] = int(cor)
            v["remapped_rows_uncorrectable"] = int(unc)
            v["remap_pending"] = bool(pending)
            v["remap_failure"] = bool(failure)
        now = time.monotonic()
        if now - dev.pcie_read_at >= self.slow_interval_s:
            replays = call(dev, errors, "nvmlDeviceGetPcieReplayCounter")
            if replays is not None or ("nvmlDeviceGetPcieReplayCounter",) in dev.absent:
                # Only a real answer (a value, or "absent") starts the interval; an error retries next time.
                dev.pcie_replay, dev.pcie_read_at = _int(replays), now
        v["pcie_replay_counter"] = dev.pcie_replay
        v["nvlink_crc_errors"], v["nvlink_replay_errors"] = self._nvlink_counters(dev, errors)

        procs = call(dev, errors, "nvmlDeviceGetComputeRunningProcesses")
        v["processes"] = [str(p.pid) for p in procs] if procs else []

        mem_temp = self._memory_temp(dev, errors)
        return v, mem_temp

    def _memory_temp(self, dev: _Device, errors: list[str]) -> float | None:
        """HBM temperature: only exposed as a field value (there is no dedicated call)."""
        field_id = getattr(self._nv, "NVML_FI_DEV_MEMORY_TEMP", None)
        if field_id is None:
            return None
        field_ids = (field_id,)
        values = self._call(dev, errors, "nvmlDeviceGetFieldValues", field_ids)
        if not values:
            return None
        fv = values[0]
        if int(fv.nvmlReturn) != 0:
            if int(fv.nvmlReturn) == int(self._nv.NVML_ERROR_GPU_IS_LOST):
                raise _GpuLost
            # The call succeeded but this field did not: same rule as a NOT_SUPPORTED call.
            if int(fv.nvmlReturn) in self._absent_codes():
                dev.absent.add(("nvmlDeviceGetFieldValues", field_ids))
            return None
        return float(getattr(fv.value, _VALUE_MEMBER.get(int(fv.valueType), "uiVal")))

    def _absent_codes(self) -> set[int]:
        nv = self._nv
        return {
            int(nv.NVML_ERROR_NOT_SUPPORTED),
            int(nv.NVML_ERROR_NO_PERMISSION),
            int(nv.NVML_ERROR_FUNCTION_NOT_FOUND),
        }

    def _nvlink_counters(self, dev: _Device, errors: list[str]) -> tuple[int | None, int | None]:
        """Sum CRC (flit + data) and replay error counters over the links that answer; None without NVLink."""
        nv = self._nv
        if dev.nvlinks is None:
            dev.nvlinks = list(self._probe_nvlinks(dev))
        if not dev.nvlinks:
            return None, None
        crc: int | None = None
        replay: int | None = None
        for link in dev.nvlinks:
            for counter in (nv.NVML_NVLINK_ERROR_DL_CRC_FLIT, nv.NVML_NVLINK_ERROR_DL_CRC_DATA):
                value = self._call(dev, errors, "nvmlDeviceGetNvLinkErrorCounter", link, counter)
                if value is not None:
                    crc = (crc or 0) + int(value)
            value = self._call(dev, errors, "nvmlDeviceGetNvLinkErrorCounter", link, nv.NVML_NVLINK_ERROR_DL_REPLAY)
            if value is not None:
                replay = (replay or 0) + int(value)
        return crc, replay

    def _probe_nvlinks(self, dev: _Device) -> Iterator[int]:
        """Links 0.. until the first that NVML refuses (links are numbered densely from 0)."""
        nv = self._nv
        fn = getattr(nv, "nvmlDeviceGetNvLinkState", None)
        if fn is None:
            return
        for link in range(int(getattr(nv, "NVML_NVLINK_MAX_LINKS", 18))):
            try:
                fn(dev.handle, link)
            except nv.NVMLError_GpuIsLost as exc:
                raise _GpuLost from exc  # dev.nvlinks stays None: probe again once the GPU is back
            except nv.NVMLError:
                # NOT_SUPPORTED on GPUs without NVLink (link 0), INVALID_ARGUMENT past the last link.
                return
            yield link


def _float(value: Any) -> float | None:
    return float(value) if value is not None else None


def _int(value: Any) -> int | None:
    return int(value) if value is not None else None


def open_gpu_source(
    node: str,
    *,
    nvml: NvmlModule | None = None,
    replay_gpus: int = 8,
    watch_xids: bool = True,
) -> GpuSource:
    """The real NVML collector when this machine has a driver and a GPU, else the recorded H100 trace.

    Falling back is logged (warning) with `NVML_UNAVAILABLE_MESSAGE`, so an operator who expected real
    readings sees why they are not getting them.
    """
    try:
        return NvmlCollector(nvml, node=node, watch_xids=watch_xids)
    except NvmlUnavailable as exc:
        log.warning("%s; replaying the recorded H100 trace for %s", exc, node)
        from tools.telemetry.replay import NvmlReplaySource  # lazy: the replay loads data on first use

        return NvmlReplaySource(node=node, gpus=replay_gpus)
