"""Which Ray the indexing job runs on: `--ray-address` (`ray_address=`) -> `ray.init` arguments.

    local           start a private local Ray for this job (never joins one), with `num_cpus`
    auto            join the Ray cluster running on this machine (`ray start`); error if none
    HOST:PORT       join the cluster whose GCS is at that address
    ray://HOST:PORT join through Ray Client
    None (default)  $RAY_ADDRESS when set (what `ray job submit` and KubeRay's RayJob set for
                    their entrypoint), else `local`

Decision: the default never joins by accident. `ray.init()` without an address joins a running
`ray start` cluster on the machine (Ray's own rule), where passing `num_cpus` is an error; so a
plain `tokenreel index DIR` always starts its own Ray unless told otherwise. Joining never passes
the local-only arguments (`num_cpus`, `include_dashboard`): a `--num-cpus` with a join is
refused up front, since the cluster's nodes, not this job, decide their resources. A Ray
already initialised in this process (a notebook, a test session) is used as it is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

LOCAL = "local"
AUTO = "auto"
ADDRESS_ENV = "RAY_ADDRESS"


def resolve_address(address: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The address the job uses: `address`, else $RAY_ADDRESS, else `local` (validated)."""
    chosen = address if address is not None else (environ.get(ADDRESS_ENV) or LOCAL)
    if not isinstance(chosen, str) or not chosen.strip() or any(c.isspace() for c in chosen):
        raise ValueError(
            f"ray_address must be 'local', 'auto', HOST:PORT or ray://HOST:PORT, got {chosen!r}"
        )
    return chosen


def ray_init_arguments(
    address: str | None, num_cpus: int | None, environ: Mapping[str, str] = os.environ
) -> dict[str, Any]:
    """The keyword arguments of `ray.init` for this address (see the module docstring)."""
    chosen = resolve_address(address, environ)
    if chosen == LOCAL:
        arguments: dict[str, Any] = {"address": LOCAL, "include_dashboard": False}
        if num_cpus is not None:
            arguments["num_cpus"] = num_cpus
        return arguments
    if num_cpus is not None:
        raise ValueError(
            f"num_cpus sets the CPUs of a local Ray; joining the cluster at {chosen!r} uses the "
            "nodes' own resources (drop --num-cpus, or use --ray-address local)"
        )
    return {"address": chosen}


@contextmanager
def ray_connection(address: str | None, num_cpus: int | None) -> Iterator[None]:
    """Connected to Ray for the block: reuse an initialised Ray, else `ray.init` with
    `ray_init_arguments` (checked before anything starts), shut down afterwards."""
    arguments = ray_init_arguments(address, num_cpus)
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(**arguments)
    try:
        yield
    finally:
        ray.shutdown()
