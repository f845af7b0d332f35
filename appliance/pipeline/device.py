"""The torch device in one place: which device, its name, and every CUDA call that takes one.

Several ``torch.cuda`` functions refuse a device without an index (``torch.device("cuda")``):
``set_per_process_memory_fraction`` raises ``ValueError: Expected a torch.device with a specified index``.
:func:`resolve_device` therefore turns every device the appliance is given (``None``, ``"cuda"``, ``"cpu"``,
``"cuda:1"``) into one with an index before anything else sees it, and the CUDA calls below are the only ones
the appliance makes, so a CPU test can replace them with strict fakes (``tests/pipeline/test_device.py``).
"""

from __future__ import annotations

import functools
import platform
import resource
from pathlib import Path

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to use, always with an index on CUDA.

    ``None`` means CUDA when a GPU is present (the current CUDA device), else the CPU.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def is_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


@functools.cache
def device_name(device: torch.device) -> str:
    """What the device is, for throughput tables and run records: the GPU's name, or the CPU model and threads."""
    if is_cuda(device):
        return torch.cuda.get_device_name(resolve_device(device))
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"cpu {model} ({torch.get_num_threads()} threads)"


def cap_gpu_memory(device: torch.device, gpu_memory_gb: float) -> float | None:
    """Limit this process's CUDA caching allocator on ``device`` to ``gpu_memory_gb``; returns the fraction set
    (None on the CPU). A larger GPU then behaves like the 8 GB target card."""
    if not is_cuda(device):
        return None
    device = resolve_device(device)
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = min(1.0, gpu_memory_gb * 2**30 / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


def reset_peak_memory(device: torch.device) -> None:
    if is_cuda(device):
        torch.cuda.reset_peak_memory_stats(resolve_device(device))


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak CUDA memory allocated since the last :func:`reset_peak_memory` (None on the CPU)."""
    if not is_cuda(device):
        return None
    return torch.cuda.max_memory_allocated(resolve_device(device)) / 2**20


def peak_reserved_mb(device: torch.device) -> float | None:
    if not is_cuda(device):
        return None
    return torch.cuda.max_memory_reserved(resolve_device(device)) / 2**20


def process_peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory on CUDA; on the CPU the process's peak resident memory (Linux reports KiB)."""
    peak = peak_memory_mb(device)
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def free_memory_mb(device: torch.device) -> float | None:
    """Free memory of the GPU (all processes counted), or the machine's available memory for a CPU device (None
    where the system does not say)."""
    if is_cuda(device):
        free, _total = torch.cuda.mem_get_info(resolve_device(device))
        return free / 2**20
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return None


def release_cached_memory(device: torch.device) -> None:
    """Give the CUDA caching allocator's free blocks back (after an out-of-memory error or a dropped trial)."""
    if is_cuda(device):
        torch.cuda.empty_cache()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timing on CUDA measures nothing without it)."""
    if is_cuda(device):
        torch.cuda.synchronize(resolve_device(device))


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision type of the trainer on ``device``: bf16 where the GPU supports it, else fp16; None on the CPU."""
    if not is_cuda(device):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
