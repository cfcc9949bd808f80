"""The up-front check that the cluster can hold the service (`tokenreel serve`'s first step; the
real command is in test_commands.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.resources import InsufficientResources, check_resources
from serving.settings import ServeSettings


def settings(tmp_path: Path, **values: object) -> ServeSettings:
    return ServeSettings.from_args({"store_url": str(tmp_path), **values})


def test_two_one_cpu_replicas_and_the_http_replica_do_not_fit_two_cpus(tmp_path: Path) -> None:
    """The issue's hang: the HTTP replica's 0.1 CPU could never be scheduled."""
    wanted = settings(tmp_path, min_replicas=2, max_replicas=2)
    with pytest.raises(InsufficientResources) as error:
        check_resources(wanted, [{"CPU": 2.0}])
    message = str(error.value)
    assert "2 model replicas x 1 CPU + 1 HTTP replica x 0.1 CPU = 2.1 CPUs" in message
    assert "the cluster has 2" in message and "--min-replicas" in message
    check_resources(wanted, [{"CPU": 2.0}, {"CPU": 0.5}])  # another node makes room
    check_resources(settings(tmp_path, min_replicas=2, max_replicas=2, num_cpus=0.5), [{"CPU": 2}])


def test_each_replica_must_fit_on_one_node(tmp_path: Path) -> None:
    big = settings(tmp_path, num_cpus=4)
    with pytest.raises(InsufficientResources, match="largest node has 2"):
        check_resources(big, [{"CPU": 2.0}] * 4)  # 8 CPUs in all, 2 per node
    check_resources(big, [{"CPU": 2.0}, {"CPU": 8.0}])


def test_gpus_are_counted(tmp_path: Path) -> None:
    gpu = settings(tmp_path, num_gpus=1, min_replicas=2, max_replicas=2)
    with pytest.raises(InsufficientResources, match="GPU"):
        check_resources(gpu, [{"CPU": 16.0, "GPU": 1.0}])
    check_resources(gpu, [{"CPU": 16.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}])
    with pytest.raises(InsufficientResources, match="GPU"):
        check_resources(gpu, [{"CPU": 16.0}])


def test_fractions_that_just_fit_pass(tmp_path: Path) -> None:
    """0.3 + 0.3 + 0.3 + 0.1 is 0.9999999999999999 in floats; Ray's resources are decimals."""
    thirds = settings(tmp_path, num_cpus=0.3, min_replicas=3, max_replicas=3)
    check_resources(thirds, [{"CPU": 1.0}])
