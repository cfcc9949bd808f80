"""ByteLRUCache: byte bound, LRU order, statistics, single-flight loading."""

from __future__ import annotations

import asyncio

import pytest

from serving.cache import ByteLRUCache


def sized_cache(capacity: int) -> ByteLRUCache[str, bytes]:
    return ByteLRUCache(capacity, size_of=len)


def test_evicts_least_recently_used_until_within_bytes() -> None:
    cache = sized_cache(10)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # a is now more recent than b
    cache.put("c", b"1234")  # 12 bytes > 10: b goes
    assert "b" not in cache
    assert "a" in cache and "c" in cache
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.evictions) == (2, 8, 1)


def test_value_larger_than_capacity_is_not_cached() -> None:
    cache = sized_cache(4)
    cache.put("small", b"12")
    cache.put("big", b"12345")
    assert "big" not in cache and "small" in cache


def test_replacing_a_key_updates_its_size() -> None:
    cache = sized_cache(10)
    cache.put("a", b"12345678")
    cache.put("a", b"12")
    assert cache.stats().bytes == 2


def test_hits_and_misses_are_counted() -> None:
    cache = sized_cache(10)
    assert cache.get("x") is None
    cache.put("x", b"1")
    cache.get("x")
    stats = cache.stats()
    assert (stats.hits, stats.misses) == (1, 1)


def test_rejects_negative_capacity() -> None:
    with pytest.raises(ValueError, match="capacity_bytes"):
        sized_cache(-1)


def test_concurrent_misses_share_one_load() -> None:
    cache = sized_cache(100)
    loads = 0

    async def load() -> bytes:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.01)
        return b"value"

    async def main() -> list[tuple[bytes, bool]]:
        first = await asyncio.gather(*(cache.get_or_load("k", load) for _ in range(5)))
        return [*first, await cache.get_or_load("k", load)]

    results = asyncio.run(main())
    assert loads == 1
    assert all(value == b"value" for value, _ in results)
    assert [hit for _, hit in results] == [False] * 5 + [True]


def test_failed_load_is_not_cached_and_is_retried() -> None:
    cache = sized_cache(100)
    attempts = 0

    async def flaky() -> bytes:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise OSError("store unreachable")
        return b"ok"

    async def main() -> tuple[bytes, bool]:
        with pytest.raises(OSError):
            await cache.get_or_load("k", flaky)
        return await cache.get_or_load("k", flaky)

    assert asyncio.run(main()) == (b"ok", False)


def test_a_cancelled_caller_does_not_cancel_the_shared_load() -> None:
    cache = sized_cache(100)

    async def slow() -> bytes:
        await asyncio.sleep(0.05)
        return b"v"

    async def main() -> tuple[bytes, bool]:
        impatient = asyncio.ensure_future(cache.get_or_load("k", slow))
        patient = asyncio.ensure_future(cache.get_or_load("k", slow))
        await asyncio.sleep(0.01)
        impatient.cancel()
        return await patient

    assert asyncio.run(main()) == (b"v", False)
    assert "k" in cache
