"""Can the cluster hold the service? Checked before deploying (issue 12).

Serve waits forever for a replica that no node can hold (`tokenreel serve --min-replicas 2` on a
2-CPU host never scheduled its HTTP replica and hung silently). This module answers up front from
the cluster's node resources (`ray.nodes()`): the service needs its `min_replicas` model replicas
and its HTTP replicas (Serve's controller and proxies reserve no CPU). Decision: two necessary
conditions only, so a feasible service is never refused: the totals fit the cluster, and each
replica fits on some node. An autoscaling cluster may grow later: `--skip-resource-check`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter

from serving.settings import ServeSettings

EPSILON = 1e-9  # Ray's resource amounts are fixed-point decimals; sums of floats are not


@dataclass(frozen=True)
class ReplicaGroup:
    name: str
    count: int
    cpus: float
    gpus: float


class InsufficientResources(ValueError):
    """The cluster cannot hold the service as configured; the message says what is short."""


def replica_groups(settings: ServeSettings) -> list[ReplicaGroup]:
    """The replicas the service needs to start: the model replicas and the HTTP replicas."""
    return [
        ReplicaGroup("model", settings.min_replicas, settings.num_cpus, settings.num_gpus),
        ReplicaGroup("HTTP", settings.api_replicas, settings.api_num_cpus, 0.0),
    ]


def check_resources(settings: ServeSettings, nodes: Sequence[Mapping[str, float]]) -> None:
    """Raise `InsufficientResources` unless the nodes (each a {"CPU": .., "GPU": ..} mapping of
    its total resources) can hold the service's replicas."""
    groups = replica_groups(settings)
    problems = []
    for resource, of in (("CPU", attrgetter("cpus")), ("GPU", attrgetter("gpus"))):
        need = sum(group.count * of(group) for group in groups)
        have = sum(node.get(resource, 0.0) for node in nodes)
        if need > have + EPSILON:
            parts = " + ".join(
                f"{g.count} {g.name} replica{'s' if g.count > 1 else ''} x {of(g):g} {resource}"
                for g in groups
                if of(g) > 0
            )
            problems.append(f"{parts} = {need:g} {resource}s, the cluster has {have:g}")
        largest = max((node.get(resource, 0.0) for node in nodes), default=0.0)
        for group in groups:
            if group.count and of(group) > largest + EPSILON:
                problems.append(
                    f"a {group.name} replica needs {of(group):g} {resource}s, the largest node has "
                    f"{largest:g}"
                )
    if problems:
        raise InsufficientResources(
            "the Ray cluster cannot hold the service: "
            + "; ".join(problems)
            + ". Lower --min-replicas, --num-cpus or --num-gpus, or add nodes "
            "(--skip-resource-check if the cluster autoscales)."
        )


def cluster_nodes() -> list[dict[str, float]]:
    """The total resources of each live node of the connected Ray cluster."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]
