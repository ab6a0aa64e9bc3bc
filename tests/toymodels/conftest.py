"""Settings for the toy-model tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Toy tensors are tiny: extra threads only add synchronisation (and stall on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
