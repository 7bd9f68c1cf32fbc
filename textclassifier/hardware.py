"""
What the machine computes fast, read from the machine itself: the CPU's fields and flags from /proc/cpuinfo
(cpu_info), whether the CPU does bf16 arithmetic natively (cpu_has_bf16: AVX512-BF16 or AMX), which int8 kernels
ONNX Runtime picks on it (int8_kind), whether torch sees a CUDA GPU (cuda_visible), and the one rule for automatic
precision in training and prediction (auto_precision: bf16 on GPUs of compute capability 8.0 and up, fp16 below).
torch is imported only where a GPU is asked about and a GPU driver is present.

    >>> kind_name(["avx2"]), kind_name(["avx2", "avx512bw", "avx512_vnni"])
    ('AVX2 only', 'AVX-512 with VNNI')
    >>> set(int8_kind()) <= set(INT8_FLAGS) and auto_precision("cpu") in ("bf16", "no")
    True
"""

import sys
from pathlib import Path

# Flags of CPUs with bf16 instructions: AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake, Sapphire Rapids and
# later) and AMX-BF16 (Intel Sapphire Rapids and later). Without them PyTorch emulates bf16 and a training step is
# about 20x slower than in fp32 (docs/speed.md); with them it is faster (docs/speed.md, "bf16 on the CPU").
BF16_FLAGS = ("avx512_bf16", "amx_bf16")

# Flags of the instruction sets whose kernels ONNX Runtime picks for int8 matrix products (MLAS): AVX2 alone (u8s8
# with 16-bit intermediate sums, which can saturate), AVX-VNNI, AVX-512 (BW: its integer instructions), AVX-512 VNNI
# and AMX. An int8 model's answers differ between CPUs of different kinds (docs/speed.md), so an export records the
# kind its check ran on, and a prediction on another kind says so.
INT8_FLAGS = ("avx2", "avx_vnni", "avx512bw", "avx512_vnni", "amx_int8")

# Where a GPU driver shows itself (NVIDIA's, AMD's ROCm): without one, cuda_visible() answers without importing torch.
GPU_DRIVER_PATHS = ("/proc/driver/nvidia/gpus", "/dev/nvidia0", "/dev/kfd")


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


def int8_kind(flags=None):
    """The INT8_FLAGS this CPU has (or `flags` has), in INT8_FLAGS' order: the kind of CPU for int8 inference."""
    flags = set(cpu_info()["flags"] if flags is None else flags)
    return [flag for flag in INT8_FLAGS if flag in flags]


def kind_name(kind):
    """An int8 kind in words: "AVX2 only", "AVX-512 with VNNI, AMX", ... ("no AVX2" on older or other CPUs)."""
    words = {"avx_vnni": "AVX-VNNI", "avx512_vnni": "VNNI", "amx_int8": "AMX"}
    if "avx512bw" in kind:
        extra = [words[f] for f in kind if f in ("avx512_vnni", "amx_int8")]
        return "AVX-512" + (f" with {', '.join(extra)}" if extra else "")
    if "avx2" in kind:
        return "AVX2 with AVX-VNNI" if "avx_vnni" in kind else "AVX2 only"
    return "no AVX2"


def cuda_visible():
    """Whether torch can compute on a CUDA (or ROCm) GPU here. torch is imported only when it already is, or when a
    GPU driver is present (GPU_DRIVER_PATHS), so that the ONNX path of a machine without a GPU stays torch-free."""
    if sys.modules.get("torch") is None and not any(Path(path).exists() for path in GPU_DRIVER_PATHS):
        return False
    try:
        import torch
    except ImportError:  # an ONNX-only install: nothing here computes on a GPU through torch
        return False
    return torch.cuda.is_available()


def auto_precision(device_type):
    """The precision "auto" means on a device ("cuda", "cpu", "mps", ...): "bf16" where the device computes bf16
    natively (a CUDA GPU of compute capability 8.0 and up, Ampere and later, or a ROCm GPU; a CPU with
    BF16_FLAGS); "fp16" on older CUDA GPUs (T4, V100: training adds a gradient scaler), where torch would emulate
    bf16 slowly; "no" (full precision) elsewhere. The same rule for training, prediction and serving."""
    if device_type == "cuda":
        import torch

        # torch counts emulated bf16 as supported by default (True on a T4); only the native kind is fast
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if device_type == "cpu":
        return "bf16" if cpu_has_bf16() else "no"
    return "no"  # Apple's MPS and other devices: full precision


def tf32_applies(device_type):
    """Whether TF32 can speed up fp32 matrix products on this device: a CUDA GPU of compute capability 8.0 and up
    (Ampere and later: A100, L4, H100), whose tensor cores compute them with a 10-bit mantissa (about 3 decimal
    digits, as bf16's 8 bits are under autocast). Never on a CPU, MPS or an older GPU (T4, V100)."""
    if device_type != "cuda":
        return False
    import torch

    return torch.cuda.get_device_properties(torch.cuda.current_device()).major >= 8


def set_tf32(enabled):
    """Let (or forbid) CUDA's fp32 matrix products and convolutions run in TF32; PyTorch's default forbids it."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
