"""Per-video prefix reuse: the `CachedPrefix` of a video's prompt (system prompt + visual tokens,
layers below the merge's resume layer), kept in a byte-bounded LRU so that a repeated question
about the video runs only its own text through those layers (`decoder_loop.prefill(prefixes=)`).

Keyed by the token set object, the prompt rows before the video (template and system prompt: the
plug-in's `PromptSequence.prefix_key`) and the resume layer. Decision: the token set is keyed by
identity (checked through a weak reference, so a new token set that happens to get a dead one's
id never hits): the replica's token-set cache hands out one object per stored token set, so
every question about a cached video finds the same object, and hashing the tokens on every
question would cost more than it saves. One cache serves one model (the replica's).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from compression.models.decoder_loop import CachedPrefix
from compression.token_set import TokenSet


@dataclass(frozen=True)
class PrefixCacheStats:
    queries: int  # lookups
    hits: int  # lookups that found their prefix
    entries: int
    bytes: int


class PrefixCache:
    """Byte-bounded LRU of `CachedPrefix`es; thread-safe. An entry larger than the whole
    capacity is not kept (capacity 0 turns the cache off)."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[tuple, tuple[weakref.ref, CachedPrefix]] = OrderedDict()
        self._bytes = 0
        self._queries = 0
        self._hits = 0
        self._lock = threading.Lock()

    @staticmethod
    def _key(token_set: TokenSet, prefix_key: Hashable, resume: int) -> tuple:
        return (id(token_set), prefix_key, resume)

    def get(self, token_set: TokenSet, prefix_key: Hashable, resume: int) -> CachedPrefix | None:
        key = self._key(token_set, prefix_key, resume)
        with self._lock:
            self._queries += 1
            found = self._entries.get(key)
            if found is None:
                return None
            if found[0]() is not token_set:  # the id of a token set that is gone
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return found[1]

    def put(
        self, token_set: TokenSet, prefix_key: Hashable, resume: int, prefix: CachedPrefix
    ) -> None:
        size = prefix.nbytes
        if size > self.capacity_bytes:
            return
        key = self._key(token_set, prefix_key, resume)
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (weakref.ref(token_set), prefix)
            self._bytes += size
            while self._bytes > self.capacity_bytes:
                self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple) -> None:
        _, prefix = self._entries.pop(key)
        self._bytes -= prefix.nbytes

    def stats(self) -> PrefixCacheStats:
        with self._lock:
            return PrefixCacheStats(self._queries, self._hits, len(self._entries), self._bytes)
