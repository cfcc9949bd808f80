"""Rendezvous hashing: stable preference per video, minimal movement when replicas change."""

from __future__ import annotations

from serving.routing import rendezvous_order


def test_order_is_a_stable_permutation() -> None:
    replicas = ["r1", "r2", "r3"]
    order = rendezvous_order("video-a", replicas)
    assert sorted(order) == sorted(replicas)
    assert rendezvous_order("video-a", list(reversed(replicas))) == order


def test_videos_spread_over_replicas() -> None:
    replicas = ["r1", "r2", "r3", "r4"]
    owners = {rendezvous_order(f"video-{i}", replicas)[0] for i in range(200)}
    assert owners == set(replicas)


def test_removing_a_replica_moves_only_its_videos() -> None:
    replicas = ["r1", "r2", "r3", "r4"]
    videos = [f"video-{i}" for i in range(300)]
    before = {v: rendezvous_order(v, replicas)[0] for v in videos}
    after = {v: rendezvous_order(v, ["r1", "r2", "r4"])[0] for v in videos}
    moved = {v for v in videos if before[v] != after[v]}
    assert moved == {v for v in videos if before[v] == "r3"}
