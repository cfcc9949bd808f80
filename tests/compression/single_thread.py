"""A fixture for test modules that run tiny models: one torch thread.

Tiny tensors gain nothing from intra-op threads, and on a shared, busy 2-core machine two
spinning threads per process slow such tests down by an order of magnitude.
Use: `from single_thread import single_torch_thread` then
`pytestmark = pytest.mark.usefixtures("single_torch_thread")`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def single_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
