"""Video affinity: questions about one video tend to reach the replica that has its tokens cached.

Rendezvous (highest-random-weight) hashing of the video id over the live model replicas: each
video has a stable order of preferred replicas, and when a replica joins or leaves only the videos
it owned move. Decision: we use Serve's request-router extension rather than `@serve.multiplexed`,
because Serve splits a `@serve.batch` batch by multiplexed id, which would stop questions about
different videos from sharing a forward pass, and because the multiplexed loader bounds entries,
not bytes.

Load still matters more than affinity: when the preferred replica has `imbalance_threshold` more
requests in flight than the least busy one, the request goes to the least busy replicas instead
(the same cold load a random router would cause), so a hot video cannot pin one replica.
"""

from __future__ import annotations

import hashlib

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

DEFAULT_IMBALANCE_THRESHOLD = 8


def affinity_key(pending_request: PendingRequest | None) -> str | None:
    """The video id of a routed call (`ModelServer` methods take the job first), if any."""
    if pending_request is None or not pending_request.args:
        return None
    video_id = getattr(pending_request.args[0], "video_id", None)
    return video_id if isinstance(video_id, str) else None


def rendezvous_order(key: str, replica_ids: list[str]) -> list[str]:
    """Replica ids by decreasing hash weight for `key`: stable, and minimal movement on change."""

    def weight(replica_id: str) -> int:
        digest = hashlib.blake2b(f"{key}\x00{replica_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big")

    return sorted(replica_ids, key=weight, reverse=True)


class VideoAffinityRouter(RequestRouter):
    """Serve request router for `ModelServer`; set via `RequestRouterConfig`."""

    def initialize_state(self, imbalance_threshold: int = DEFAULT_IMBALANCE_THRESHOLD) -> None:
        self.imbalance_threshold = int(imbalance_threshold)

    def _in_flight(self, replica: RunningReplica) -> int:
        return self.replica_queue_len_cache.get(replica.replica_id) or 0

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        by_load = sorted(candidate_replicas, key=self._in_flight)
        key = affinity_key(pending_request)
        if key is None:
            return [by_load]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        preferred = [by_id[i] for i in rendezvous_order(key, list(by_id))]
        if self._in_flight(preferred[0]) - self._in_flight(by_load[0]) > self.imbalance_threshold:
            return [by_load]
        # One rank per replica: the owner first; the next ones only when it is full.
        return [[replica] for replica in preferred]
