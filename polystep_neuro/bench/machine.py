"""What a benchmark ran on, in one line printed beside every table.

A roofline fraction or a fixed / float ratio means little without the CPU behind it: the
same command gives different ratios on an AVX2 and an AVX-512 machine, and int8 dot
products (VNNI, AMX) change what the fixed-point path can use.  The facts come from
``/proc/cpuinfo`` (model name, ISA flags) where there is one, torch (the kernel level its
CPU dispatch picked, its thread count) and CUDA (the GPU's name).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

# cpuinfo flag -> the name the line prints, widest vector and int8 extensions last.
ISA_FLAGS: tuple[tuple[str, str], ...] = (
    ("fma", "FMA"),
    ("avx2", "AVX2"),
    ("avx_vnni", "AVX-VNNI"),
    ("avx512f", "AVX-512F"),
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx512_bf16", "AVX-512 BF16"),
    ("amx_tile", "AMX"),
    ("amx_int8", "AMX-INT8"),
    ("amx_bf16", "AMX-BF16"),
    ("neon", "NEON"),
    ("asimd", "ASIMD"),
    ("sve", "SVE"),
)


# Environment variables that hold torch's, oneDNN's or MKL's kernels below the CPU's ISA
# (how an AVX-512 machine stands in for an AVX2 one): a table measured under them says so.
ISA_LIMITS = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
)


@dataclass(frozen=True)
class CpuFacts:
    """The CPU's model and the ISA extensions the benchmarks' ratios depend on."""

    model: str
    isa: tuple[str, ...]


def parse_cpuinfo(text: str) -> CpuFacts:
    """Model name and ISA extensions from the text of ``/proc/cpuinfo`` (x86 or Arm); on
    x86 the family and model numbers too, which tell CPU generations apart where the name
    does not (a virtual machine may show only "AMD EPYC": family 25 is Zen 3/4, 26 Zen 5)."""
    model, flags, numbers = "", set(), {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if not model and key in ("model name", "hardware", "cpu model"):
            model = value.strip()
        elif not flags and key in ("flags", "features"):
            flags = set(value.split())
        elif key in ("cpu family", "model") and key not in numbers and value.strip().isdigit():
            numbers[key] = value.strip()
    isa = tuple(name for flag, name in ISA_FLAGS if flag in flags)
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    if len(numbers) == 2:
        model += f" (family {numbers['cpu family']}, model {numbers['model']})"
    return CpuFacts(model, isa)


def cpu_facts(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuFacts:
    """This machine's CPU (the model from ``platform`` where there is no cpuinfo)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 0


def gpu_name() -> str | None:
    """The first CUDA device's name, None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def describe(facts: CpuFacts | None = None, *, gpu: bool = True) -> str:
    """One line: CPU model, ISA, torch's CPU kernel level and threads, and the GPU."""
    import torch

    facts = facts or cpu_facts()
    isa = ", ".join(facts.isa) or "no AVX2/AVX-512/NEON flags seen"
    kernels = torch.backends.cpu.get_cpu_capability()
    limits = [f"{name}={os.environ[name]}" for name in ISA_LIMITS if os.environ.get(name)]
    if limits:
        kernels += f", limited by {' '.join(limits)}"
    line = (
        f"CPU: {facts.model} ({isa}; torch kernels {kernels}), "
        f"{torch.get_num_threads()} torch thread(s) of {usable_cores()} usable cores"
    )
    if gpu:
        name = gpu_name()
        line += f"; GPU: {name}" if name else "; GPU: none (no CUDA device)"
    return line
