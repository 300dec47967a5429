"""The machine line printed beside every benchmark table names the CPU model and its ISA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from polystep_neuro.bench import machine

# Abridged /proc/cpuinfo of two kinds of x86 server and one Arm board.
XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512dq avx512_vnni avx512_bf16 amx_bf16 \
amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512dq avx512_vnni avx512_bf16 amx_bf16 \
amx_tile amx_int8
"""
EPYC_AVX2 = """processor\t: 0
model name\t: AMD EPYC 7B12 64-Core Processor
flags\t\t: fpu sse sse2 avx fma avx2 sha_ni
"""
ARM = """processor\t: 0
Features\t: fp asimd evtstrm aes crc32 atomics
CPU implementer\t: 0x41
"""


def test_parse_names_the_model_and_every_isa_extension() -> None:
    facts = machine.parse_cpuinfo(XEON)
    assert facts.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert facts.isa == (
        "FMA",
        "AVX2",
        "AVX-512F",
        "AVX-512 VNNI",
        "AVX-512 BF16",
        "AMX",
        "AMX-INT8",
        "AMX-BF16",
    )


def test_parse_claims_no_extension_the_flags_lack() -> None:
    facts = machine.parse_cpuinfo(EPYC_AVX2)
    assert facts.model == "AMD EPYC 7B12 64-Core Processor"
    assert facts.isa == ("FMA", "AVX2")  # no AVX-512 from "avx512" being absent
    assert machine.parse_cpuinfo(ARM).isa == ("ASIMD",)


def test_parse_tells_x86_generations_apart_by_family_and_model() -> None:
    # a virtual machine may name only "AMD EPYC"; Zen 4 (family 25) and Zen 5 (family 26)
    # then differ in their numbers (and Zen 5 has the VEX-coded AVX-VNNI)
    zen5 = (
        "processor\t: 0\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
        "flags\t\t: fma avx2 avx_vnni avx512f avx512_vnni\n"
    )
    facts = machine.parse_cpuinfo(zen5)
    assert facts.model == "AMD EPYC (family 26, model 2)"
    assert facts.isa == ("FMA", "AVX2", "AVX-VNNI", "AVX-512F", "AVX-512 VNNI")


def test_describe_line_names_model_isa_threads_and_gpu() -> None:
    line = machine.describe(machine.parse_cpuinfo(XEON))
    assert line.startswith("CPU: Intel(R) Xeon(R) Platinum 8480+ (FMA, AVX2, AVX-512F, ")
    assert "AMX-INT8" in line
    assert f"torch kernels {torch.backends.cpu.get_cpu_capability()}" in line
    assert f"{torch.get_num_threads()} torch thread(s)" in line
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    assert f"GPU: {gpu}" in line


def test_describe_names_the_isa_limits_a_run_was_held_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in machine.ISA_LIMITS:
        monkeypatch.delenv(name, raising=False)
    assert "limited by" not in machine.describe(machine.parse_cpuinfo(XEON))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert "limited by ONEDNN_MAX_CPU_ISA=AVX2)" in machine.describe(machine.parse_cpuinfo(XEON))


def test_this_machine_is_described(tmp_path: Path) -> None:
    missing = machine.cpu_facts(tmp_path / "no-cpuinfo")  # no /proc: the platform's name
    assert missing.model and missing.isa == ()
    assert machine.describe().startswith("CPU: ")
