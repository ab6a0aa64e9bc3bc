"""Compute resources: the one place a device name is resolved and checked, and the memory check
that refuses, in one line, an allocation the machine cannot hold before anything is allocated.
"""

from __future__ import annotations

from pathlib import Path

import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device for `device`: "auto" (CUDA when available, else CPU), "cpu", "cuda",
    "cuda:<index>" or "mps"; a name this machine cannot run on raises a one-line ValueError
    listing the ones it can."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device {device!r} is not a device name; allowed here: {', '.join(usable_devices())}"
        ) from None
    if str(resolved) not in usable_devices() and resolved.type != "cpu":
        seen = (
            f" (torch {torch.__version__} sees {torch.cuda.device_count()} CUDA device(s))"
            if resolved.type == "cuda"
            else ""
        )
        raise ValueError(
            f"device {device!r} is not available on this machine{seen}; "
            f"allowed here: {', '.join(usable_devices())}"
        )
    return resolved


def usable_devices() -> list[str]:
    """The device names resolve_device accepts on this machine."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names += ["mps", "mps:0"]
    return names


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes that can still be allocated on `device` (None when the system does not say): free
    GPU memory for CUDA; for the CPU the smaller of the kernel's MemAvailable and what is left
    under the process's cgroup memory limit (containers)."""
    device = resolve_device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    limits = [_mem_available(), _cgroup_headroom()]
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def check_allocation(n_bytes: int, what: str, device: str | torch.device = "cpu") -> None:
    """Refuse, with a one-line ValueError naming `what`, an allocation of `n_bytes` bytes larger
    than the memory available on `device`. Does nothing where availability is unknown."""
    if n_bytes < 0:
        raise ValueError(f"{what}: a size of {n_bytes} bytes is negative")
    available = available_memory(device)
    if available is not None and n_bytes > available:
        raise ValueError(
            f"{what} needs about {format_bytes(n_bytes)} but only {format_bytes(available)} of "
            f"{resolve_device(device)} memory is available; make it smaller"
        )


def format_bytes(n_bytes: float) -> str:
    """A byte count for people: 1.5 GiB, 12.0 MiB, 300 B."""
    if abs(n_bytes) < 1024:
        return f"{n_bytes:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n_bytes /= 1024
        if abs(n_bytes) < 1024:
            return f"{n_bytes:.1f} {unit}"
    return f"{n_bytes / 1024:.1f} TiB"


def _mem_available() -> int | None:
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom() -> int | None:
    """Limit minus usage of this process's cgroup (v2, else v1), None when unlimited/unknown."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 1 << 60:  # v1 writes "unlimited" as a huge number
            return None
        return max(0, int(limit) - usage)
    return None
