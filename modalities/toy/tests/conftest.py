from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """2-D toy tensors are tiny: intra-op threads only add overhead (and stall badly on a
    busy machine), so each toy test runs single-threaded and restores the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def gen():
    def make(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    return make
