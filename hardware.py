"""
What the machine computes fast, read from the machine itself (no torch import): the CPU's fields and flags from
/proc/cpuinfo, and whether the CPU does bf16 arithmetic natively. train.py's --mixed-precision auto, the torch
prediction path and bench/ read it here.

    cpu_info()["flags"]      # ["fpu", ..., "avx512_bf16", "amx_bf16", ...]
    cpu_has_bf16()           # True on AVX512-BF16 / AMX processors (AMD Zen 4+, Intel Sapphire Rapids+)
"""

from pathlib import Path

# Flags of CPUs with bf16 instructions: AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake, Sapphire Rapids and
# later) and AMX-BF16 (Intel Sapphire Rapids and later). Without them PyTorch emulates bf16 and a training step is
# about 20x slower than in fp32 (docs/speed.md); with them it is faster (docs/speed.md, "bf16 on the CPU").
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_info():
    """The first CPU's fields in /proc/cpuinfo (model name, cpu family, flags as a list, ...) and every core's
    "cpu MHz" as a list of floats; empty on a system without /proc/cpuinfo."""
    path = Path("/proc/cpuinfo")
    info, mhz = {}, []
    for line in (path.read_text() if path.exists() else "").splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "cpu MHz":
            mhz.append(float(value))
        info.setdefault(key, value)
    info["flags"] = info.get("flags", "").split()
    info["cpu MHz"] = mhz
    return info


def cpu_has_bf16():
    """Whether the CPU computes bf16 natively (BF16_FLAGS); False where it cannot be told (no /proc/cpuinfo)."""
    return any(flag in cpu_info()["flags"] for flag in BF16_FLAGS)
