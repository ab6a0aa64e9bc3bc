"""Device names and memory checks refuse, in one line naming the value, what this machine cannot
run before anything is allocated."""

import pytest
import torch

import toymodels.resources
from toymodels.resources import check_allocation, format_bytes, resolve_device


@pytest.fixture
def no_cuda(monkeypatch):
    """This machine as one without CUDA, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize(
    "name, expected",
    [("auto", "cpu"), ("cpu", "cpu"), ("cpu:0", "cpu:0"), (torch.device("cpu"), "cpu")],
)
def test_cpu_names_resolve_without_cuda(no_cuda, name, expected):
    assert resolve_device(name) == torch.device(expected)


@pytest.mark.parametrize(
    "name, refusal",
    [
        ("cuda", r"device 'cuda' is not available on this machine \(torch .* sees 0 CUDA"),
        ("cuda:0", "device 'cuda:0' is not available"),
        ("foo", "device 'foo' is not a device name"),
        ("", "device '' is not a device name"),
        ("cuda:x", "device 'cuda:x' is not a device name"),
        ("mps", "device 'mps' is not available on this machine; allowed"),
        ("meta", "device 'meta' is not available"),
    ],
)
def test_unusable_device_names_are_refused_with_the_usable_ones(no_cuda, name, refusal):
    with pytest.raises(ValueError, match=refusal) as refused:
        resolve_device(name)
    assert str(refused.value).endswith("allowed here: auto, cpu")


@pytest.mark.parametrize(
    "name, outcome",
    [("auto", "cuda"), ("cuda", "cuda"), ("cuda:1", "cuda:1"), ("cuda:2", "sees 2 CUDA")],
)
def test_cuda_indices_are_checked_against_the_devices_present(two_gpus, name, outcome):
    if outcome.startswith("sees"):
        with pytest.raises(ValueError, match=f"{outcome}.*allowed here: auto, cpu, cuda, cuda:0"):
            resolve_device(name)
    else:
        assert resolve_device(name) == torch.device(outcome)


def test_the_trainer_and_the_model_loader_share_the_one_resolution():
    import llm.models
    import toymodels.train

    assert toymodels.train.resolve_device is llm.models.resolve_device is resolve_device


@pytest.mark.parametrize(
    "n_bytes, available, refusal",
    [
        (10, 100, None),
        (100, 100, None),
        (101, 100, "needs about 101 B but only 100 B of cpu memory"),
        (3 * 2**30, 2**30 + 2**29, "needs about 3.0 GiB but only 1.5 GiB"),
        (2**60, None, None),  # availability unknown: nothing to check against
        (-1, 100, "a size of -1 bytes is negative"),
    ],
)
def test_allocations_beyond_available_memory_are_refused(monkeypatch, n_bytes, available, refusal):
    monkeypatch.setattr(toymodels.resources, "available_memory", lambda device="cpu": available)
    if refusal is None:
        check_allocation(n_bytes, "the activation buffer")
        return
    with pytest.raises(ValueError, match=refusal) as refused:
        check_allocation(n_bytes, "the activation buffer")
    assert str(refused.value).startswith("the activation buffer")


def test_this_machines_memory_is_read_and_bounds_an_impossible_allocation():
    available = toymodels.resources.available_memory("cpu")
    assert available is None or 0 < available < 2**60
    if available is not None:
        with pytest.raises(ValueError, match="an SAE of width 2\\^40 needs about 16.0 TiB"):
            check_allocation(2**44, "an SAE of width 2^40")
    check_allocation(1024, "a small table")


@pytest.mark.parametrize(
    "n_bytes, text",
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (12 * 2**20, "12.0 MiB"), (2**42, "4.0 TiB")],
)
def test_byte_counts_read_as_people_write_them(n_bytes, text):
    assert format_bytes(n_bytes) == text
