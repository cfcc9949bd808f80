"""Pool sizes, the cluster-fit check and the Ray address rules, without Ray."""

from __future__ import annotations

import pytest

from jobs.index.cluster import ray_init_arguments
from jobs.index.command import parse_resources
from jobs.index.resources import InsufficientResources, Pool, Resources, check_fits


@pytest.mark.parametrize(
    ("value", "expected"),
    [(3, Pool(3, 3)), ("3", Pool(3, 3)), ("1:8", Pool(1, 8)), ((2, 4), Pool(2, 4))],
)
def test_pool_sizes(value: object, expected: Pool) -> None:
    assert Pool.of(value, "workers") == expected


@pytest.mark.parametrize(
    "value", [0, -1, "0", "4:2", "1:", ":3", "a:b", "1:2:3", 1.5, True, (0, 2)]
)
def test_bad_pool_sizes_are_refused_naming_the_option(value: object) -> None:
    with pytest.raises(ValueError, match="workers"):
        Pool.of(value, "workers")


def test_a_pool_that_cannot_run_with_decoding_is_refused_with_one_clear_message() -> None:
    """The issue: --num-cpus 1 gave the encode actor the only CPU; decoding never ran."""
    one_cpu = [{"CPU": 1.0}]
    with pytest.raises(InsufficientResources) as raised:
        check_fits(Resources(), one_cpu)
    message = str(raised.value)
    assert "1 encode worker(s) x 1 + 1 decode task(s) x 1 = 2 CPU, the cluster has 1" in message
    assert "--num-cpus" in message
    check_fits(Resources(), [{"CPU": 2.0}])


def test_the_pool_minimum_counts_not_its_maximum() -> None:
    elastic = Resources(workers=Pool(1, 16), gpus_per_worker=1.0)
    check_fits(elastic, [{"CPU": 4.0, "GPU": 1.0}])
    with pytest.raises(InsufficientResources, match="2 encode worker"):
        check_fits(Resources(workers=Pool(2, 16), gpus_per_worker=1.0), [{"CPU": 4.0, "GPU": 1}])


def test_an_actor_must_fit_on_one_node() -> None:
    wide = Resources(gpus_per_worker=2.0, worker_resources={"accelerator": 1.0})
    split = [{"CPU": 2.0, "GPU": 1.0, "accelerator": 1.0}, {"CPU": 2.0, "GPU": 1.0}]
    with pytest.raises(InsufficientResources, match="no node can hold one encode worker"):
        check_fits(wide, split)
    check_fits(wide, [{"CPU": 1.0}, {"CPU": 1.0, "GPU": 2.0, "accelerator": 1.0}])
    with pytest.raises(InsufficientResources, match="accelerator"):
        check_fits(Resources(worker_resources={"accelerator": 1.0}), [{"CPU": 8.0}])


def test_the_decode_minimum_needs_its_cpus() -> None:
    with pytest.raises(InsufficientResources, match="3 decode task"):
        check_fits(Resources(decode_workers=Pool(3, 6)), [{"CPU": 3.0}])


@pytest.mark.parametrize(
    "options",
    [
        {"gpus_per_worker": -1.0},
        {"gpus_per_worker": float("nan")},
        {"decode_threads": 0},
        {"num_cpus": 0},
        {"worker_resources": {"GPU": 1.0}},
        {"worker_resources": {"accelerator": 0}},
    ],
)
def test_bad_resources_are_refused(options: dict) -> None:
    with pytest.raises(ValueError):
        Resources(**options)


def test_worker_resource_options_parse() -> None:
    assert parse_resources(["accelerator=1", "node-type = 0.5"]) == {
        "accelerator": 1.0,
        "node-type": 0.5,
    }
    for bad in (["accelerator"], ["=1"], ["a=x"]):
        with pytest.raises(ValueError, match="NAME=AMOUNT"):
            parse_resources(bad)


# -- which Ray --------------------------------------------------------------------------------


def test_default_is_a_private_local_ray_unless_ray_address_is_set() -> None:
    assert ray_init_arguments(None, None, environ={}) == {
        "address": "local",
        "include_dashboard": False,
    }
    assert ray_init_arguments(None, 3, environ={})["num_cpus"] == 3
    assert ray_init_arguments(None, None, environ={"RAY_ADDRESS": "10.0.0.5:6379"}) == {
        "address": "10.0.0.5:6379"
    }


@pytest.mark.parametrize("address", ["auto", "10.0.0.5:6379", "ray://head:10001"])
def test_joining_never_passes_local_only_arguments(address: str) -> None:
    assert ray_init_arguments(address, None, environ={}) == {"address": address}
    with pytest.raises(ValueError, match="--num-cpus"):
        ray_init_arguments(address, 2, environ={})


def test_local_never_joins_even_with_ray_address_set() -> None:
    arguments = ray_init_arguments("local", 2, environ={"RAY_ADDRESS": "auto"})
    assert arguments == {"address": "local", "include_dashboard": False, "num_cpus": 2}


@pytest.mark.parametrize("address", ["", "  ", "host name:1"])
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValueError, match="ray_address"):
        ray_init_arguments(address, None, environ={})
