"""An in-memory least-recently-used cache bounded by bytes, with single-flight async loading.

A model replica keeps the token sets it has served here, so a second question about a video skips
the store. The bound is on bytes (`TokenSet.nbytes`), not on entries: token sets differ in size by
orders of magnitude (a 1% set of a short clip vs a full 6,272-token set).
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    capacity_bytes: int
    hits: int
    misses: int
    evictions: int


class ByteLRUCache(Generic[K, V]):
    """LRU map whose total `size_of(value)` stays within `capacity_bytes`.

    A value larger than the whole capacity is not cached (it would evict everything and then be
    evicted itself by the next insert); the caller still gets it from `get_or_load`.
    Thread-safe: loads may finish on worker threads.
    """

    def __init__(self, capacity_bytes: int, size_of: Callable[[V], int]) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._size_of = size_of
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._hits = self._misses = self._evictions = 0
        self._lock = threading.Lock()
        self._inflight: dict[K, asyncio.Future[V]] = {}

    def get(self, key: K) -> V | None:
        """The cached value (now most recently used), or None; counts a hit or a miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return entry[0]

    def put(self, key: K, value: V) -> None:
        size = int(self._size_of(value))
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.capacity_bytes:
                return
            self._entries[key] = (value, size)
            self._bytes += size
            while self._bytes > self.capacity_bytes:
                _, (_, evicted_size) = self._entries.popitem(last=False)
                self._bytes -= evicted_size
                self._evictions += 1

    def __contains__(self, key: K) -> bool:
        with self._lock:
            return key in self._entries

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                entries=len(self._entries),
                bytes=self._bytes,
                capacity_bytes=self.capacity_bytes,
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
            )

    async def get_or_load(self, key: K, load: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """(value, was_cached). Concurrent misses on one key share a single `load()`.

        The load runs as its own task, so a caller that is cancelled (a client that hung up) does
        not cancel the load the other callers wait on.
        """
        value = self.get(key)
        if value is not None:
            return value, True
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._load_and_put(key, load))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._forget_load(key, done))
        return await asyncio.shield(task), False

    async def _load_and_put(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        value = await load()
        self.put(key, value)
        return value

    def _forget_load(self, key: K, done: asyncio.Future[V]) -> None:
        self._inflight.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved: a failure every waiter gave up on is not a warning
