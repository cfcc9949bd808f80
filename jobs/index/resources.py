"""How the indexing pipeline is spread over a Ray cluster, and whether the cluster can hold it.

Pools. The encode actors form an elastic pool, `Pool(min, max)` (`--workers MIN:MAX`; a single
N is N:N): Ray Data's autoscaling actor pool starts `min` actors and adds actors up to `max`
while batches queue, e.g. as a KubeRay cluster adds GPU nodes, and releases idle ones. Decode
tasks are elastic by nature (a task holds its CPU only while it runs), so for them `max` caps the
concurrent tasks (None: whatever CPUs are free) and `min` is what the cluster must hold up front.

Fit check (`check_fits`). A pipeline whose pools cannot all run at once never finishes: with
`--num-cpus 1` the encode actor holds the only CPU and no decode task is ever scheduled, so the
job hung silently. Before starting, the cluster's node resources must hold the encode pool's
`min` actors plus `min` decode tasks (one CPU each; write tasks reserve none). Decision: two
necessary conditions only, so a feasible job is never refused: the totals fit, and one actor
(and one decode task) fits on some node. A cluster that autoscales may grow later: the check
is skipped with `skip_resource_check` (`--skip-resource-check`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

EPSILON = 1e-9  # Ray's resource amounts are fixed-point decimals; sums of floats are not
ENCODE_ACTOR_CPUS = 1.0
DECODE_TASK_CPUS = 1.0
DEFAULT_DECODE_THREADS = 2


class InsufficientResources(ValueError):
    """The cluster cannot run the pipeline's pools at once; the message says what is short."""


@dataclass(frozen=True)
class Pool:
    """An elastic pool size: at least `min`, at most `max`."""

    min: int
    max: int

    def __post_init__(self) -> None:
        if not _positive_int(self.min):
            raise ValueError(f"a pool's minimum must be a positive integer, got {self.min!r}")
        if not _positive_int(self.max) or self.max < self.min:
            raise ValueError(
                f"a pool's maximum must be an integer >= its minimum {self.min}, got {self.max!r}"
            )

    @classmethod
    def of(cls, value: Pool | int | str | tuple[int, int], name: str) -> Pool:
        """A pool from N, (MIN, MAX), "N" or "MIN:MAX"; ValueError naming `name` otherwise."""
        try:
            if isinstance(value, Pool):
                return value
            if isinstance(value, str):
                return cls.parse(value)
            if isinstance(value, tuple) and len(value) == 2:
                return cls(*value)
            if _positive_int(value):
                return cls(value, value)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        raise ValueError(f"{name} must be N or MIN:MAX (positive integers), got {value!r}")

    @classmethod
    def parse(cls, text: str) -> Pool:
        """ "N" (N:N) or "MIN:MAX"."""
        low, sep, high = text.strip().partition(":")
        try:
            first = int(low)
            second = int(high) if sep else first
        except ValueError:
            raise ValueError(f"expected N or MIN:MAX (positive integers), got {text!r}") from None
        return cls(first, second)

    @property
    def elastic(self) -> bool:
        return self.max != self.min

    def __str__(self) -> str:
        return str(self.min) if not self.elastic else f"{self.min}:{self.max}"


@dataclass(frozen=True)
class Resources:
    """How the pipeline is spread over the cluster (see `index_videos` for each field)."""

    workers: Pool = field(default_factory=lambda: Pool(1, 1))
    gpus_per_worker: float = 0.0
    worker_resources: Mapping[str, float] = field(default_factory=dict)
    decode_workers: Pool | None = None
    decode_threads: int = DEFAULT_DECODE_THREADS
    ray_address: str | None = None
    num_cpus: int | None = None
    runtime_env: dict[str, Any] | None = None
    skip_resource_check: bool = False

    def __post_init__(self) -> None:
        for name in ("decode_threads", "num_cpus"):
            value = getattr(self, name)
            if value is not None and not _positive_int(value):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        gpus = self.gpus_per_worker
        if not isinstance(gpus, (int, float)) or not math.isfinite(gpus) or gpus < 0:
            raise ValueError(f"gpus_per_worker must be a number >= 0, got {gpus!r}")
        for name, amount in self.worker_resources.items():
            if not isinstance(name, str) or not name or name in ("CPU", "GPU", "memory"):
                raise ValueError(
                    f"worker resource names are custom Ray resources, got {name!r} "
                    "(CPUs and GPUs have their own options)"
                )
            if not isinstance(amount, (int, float)) or not math.isfinite(amount) or amount <= 0:
                raise ValueError(f"worker resource {name!r} needs an amount > 0, got {amount!r}")

    @property
    def actor_bundle(self) -> dict[str, float]:
        """What one encode actor reserves."""
        bundle = {"CPU": ENCODE_ACTOR_CPUS, "GPU": float(self.gpus_per_worker)}
        bundle.update(self.worker_resources)
        return {name: amount for name, amount in bundle.items() if amount > 0}

    @property
    def min_decode_tasks(self) -> int:
        return self.decode_workers.min if self.decode_workers is not None else 1


def check_fits(resources: Resources, nodes: Sequence[Mapping[str, float]]) -> None:
    """Raise `InsufficientResources` unless the nodes (each a mapping of its total resources)
    can run the encode pool's minimum of actors and the minimum of decode tasks at once."""
    actors, decodes = resources.workers.min, resources.min_decode_tasks
    need: dict[str, float] = {
        name: actors * amount for name, amount in resources.actor_bundle.items()
    }
    need["CPU"] = need.get("CPU", 0.0) + decodes * DECODE_TASK_CPUS
    problems = []
    for name, amount in need.items():
        have = sum(node.get(name, 0.0) for node in nodes)
        if amount > have + EPSILON:
            problems.append(
                f"{_needs(resources, name)} = {amount:g} {name}, the cluster has {have:g}"
            )
    if not any(_holds(node, resources.actor_bundle) for node in nodes):
        problems.append(f"no node can hold one encode worker ({_describe(resources.actor_bundle)})")
    if problems:
        raise InsufficientResources(
            "the Ray cluster cannot run the indexing pipeline: "
            + "; ".join(problems)
            + ". Give Ray more (--num-cpus, nodes), or ask for less (--workers MIN:MAX, "
            "--decode-workers, --gpus-per-worker); --skip-resource-check if the cluster "
            "autoscales."
        )


def cluster_nodes() -> list[dict[str, float]]:
    """The total resources of each live node of the connected Ray cluster."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def _needs(resources: Resources, name: str) -> str:
    actors = resources.workers.min
    parts = [f"{actors} encode worker(s) x {resources.actor_bundle.get(name, 0.0):g}"]
    if name == "CPU":
        parts.append(f"{resources.min_decode_tasks} decode task(s) x {DECODE_TASK_CPUS:g}")
    return " + ".join(parts)


def _holds(node: Mapping[str, float], bundle: Mapping[str, float]) -> bool:
    return all(node.get(name, 0.0) + EPSILON >= amount for name, amount in bundle.items())


def _describe(bundle: Mapping[str, float]) -> str:
    return ", ".join(f"{amount:g} {name}" for name, amount in bundle.items())


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
