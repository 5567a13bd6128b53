"""A watch-based cache of one Kubernetes resource: client-go's informer pattern, with the official client.

Layer: tools (imports `tools.k8s_client`). `KubernetesTelemetry(watch=True)` keeps one per resource (nodes,
pods) so that a tick reads memory instead of listing 1,250 nodes and every pod from the API server:

1. **list once** (`start()`, on the caller's thread: a cluster that cannot be read fails the first snapshot
   plainly), remembering the list's resourceVersion;
2. **watch from there** on a background thread, with `allowWatchBookmarks` (the server's BOOKMARK events move
   the resourceVersion on without an object, so a resumed watch does not replay history) and a server-side
   `timeoutSeconds`, after which the watch resumes from the last resourceVersion seen;
3. **relist on 410 Gone** (the server forgot that resourceVersion) and after any other failure of the watch
   (after a back-off), replacing the whole cache: objects deleted while nobody watched disappear then.

`items()` is a copy of the cache; `synced` says whether the last (re)list succeeded and the watch is running;
`relists`, `expired` (410s) and `events` count what happened (for tests and metrics).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, watch

from tools.k8s_client import KubeCaller

log = logging.getLogger("opsmedic.tools.k8s_informer")


def _key(obj: Any) -> str:
    meta = obj.metadata
    return f"{meta.namespace or ''}/{meta.name}"


class Informer:
    """The cache of one resource (see the module docstring). `list_fn(*args, **kwargs)` is a list call of
    the official client (`CoreV1Api.list_node`, `list_namespaced_pod` ...), also used to watch."""

    def __init__(self, what: str, list_fn: Callable[..., Any], *args: Any, caller: KubeCaller | None = None,
                 watch_timeout_s: int = 60, backoff_s: float = 1.0, **kwargs: Any) -> None:
        self.what = what
        self._list_fn = list_fn
        self._args = args
        self._kwargs = kwargs
        self._caller = caller or KubeCaller()
        self.watch_timeout_s = watch_timeout_s
        self.backoff_s = backoff_s
        self._items: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watch: Any = None
        self._thread: threading.Thread | None = None
        self.resource_version: str | None = None
        self.synced = False
        self.relists = 0
        self.events = 0
        self.expired = 0  # 410 Gone answers
        # when the API server last answered this cache (a list, any event, a bookmark): a cache that has
        # heard nothing for a while is confirmed live by its reader (`KubernetesTelemetry`) before it is used
        self.last_heard = time.monotonic()

    def start(self) -> None:
        """List (raises `ToolError` when the API cannot be read), then watch in the background."""
        if self._thread is not None:
            return
        self._relist()
        self._thread = threading.Thread(target=self._run, name=f"informer:{self.what}", daemon=True)
        self._thread.start()

    def items(self) -> list[Any]:
        with self._lock:
            return list(self._items.values())

    def stop(self) -> None:
        self._stop.set()
        w: Any = self._watch
        if w is not None:
            w.stop()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _relist(self) -> None:
        listing = self._caller.call(f"list {self.what}", self._list_fn, *self._args, **self._kwargs)
        with self._lock:
            self._items = {_key(o): o for o in (listing.items or [])}
            self.resource_version = listing.metadata.resource_version
        self.relists += 1
        self.synced = True
        self.heard()

    def heard(self) -> None:
        """The API server answered (this cache's watch, or a probe its reader made)."""
        self.last_heard = time.monotonic()

    def silent_for(self) -> float:
        return time.monotonic() - self.last_heard

    def _apply(self, event: dict[str, Any]) -> None:
        self.heard()
        kind = event["type"]
        if kind == "BOOKMARK":
            rv = ((event.get("raw_object") or {}).get("metadata") or {}).get("resourceVersion")
            if rv:
                self.resource_version = str(rv)
            return
        obj = event["object"]
        with self._lock:
            if kind == "DELETED":
                self._items.pop(_key(obj), None)
            else:  # ADDED, MODIFIED
                self._items[_key(obj)] = obj
            self.resource_version = obj.metadata.resource_version or self.resource_version
        self.events += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.synced:
                    self._relist()
                self._watch = watch.Watch()  # type: ignore[no-untyped-call]
                for event in self._watch.stream(self._list_fn, *self._args, resource_version=self.resource_version,
                                                allow_watch_bookmarks=True, timeout_seconds=self.watch_timeout_s,
                                                **self._kwargs):
                    self._apply(event)
                    if self._stop.is_set():
                        break
            except client.ApiException as exc:
                if self._stop.is_set():
                    break
                if exc.status == 410:  # the server compacted past our resourceVersion: start over
                    log.info("watch expired; relisting", extra={"resource": self.what})
                    self.expired += 1
                    self.synced = False
                    continue
                self._failed(exc)
            except Exception as exc:  # a dropped connection, a restarting API server: relist after a pause
                if self._stop.is_set():
                    break
                self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self.synced = False
        log.warning("watch failed; relisting after a back-off", extra={"resource": self.what, "error": str(exc)[:200]})
        self._stop.wait(self.backoff_s)


def wait_until(pred: Callable[[], bool], timeout_s: float) -> bool:
    """Poll `pred` until it holds or `timeout_s` passes (tests and the bench wait for a cache to catch up)."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
