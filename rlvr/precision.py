"""Learner precision: whether this machine runs bfloat16 natively, checked before a run starts.

A CPU without bf16 instructions (no AVX-512 BF16 / AMX on x86) emulates bf16 matmuls and runs
them several times slower than float32, so ``train.dtype: bfloat16`` there is a mistake worth a
warning with the measured slowdown. CUDA GPUs from Ampere on run bf16 natively; older ones are
refused by torch itself.
"""

from __future__ import annotations

import time
import warnings


def cpu_has_bf16() -> bool:
    """x86 AVX-512 BF16 or AMX, or an Arm CPU with bf16 (what torch's oneDNN kernels use)."""
    import torch

    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported",
                                                          "_is_arm_sve_bf16_supported")]
    return any(bool(check()) for check in checks if check is not None)


def bf16_slowdown(size: int = 512, repeats: int = 5) -> float:
    """Time of a bf16 matmul over a float32 one on this CPU (best of ``repeats``)."""
    import torch

    def best(dtype) -> float:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        return min(times[1:])

    return best(torch.bfloat16) / best(torch.float32)


def check_learner_dtype(dtype: str, device: str = "cpu", has_bf16: bool | None = None) -> str | None:
    """Warn (and return the warning) when bfloat16 is asked for on a CPU without bf16 support."""
    if dtype != "bfloat16" or device != "cpu":
        return None
    if cpu_has_bf16() if has_bf16 is None else has_bf16:
        return None
    msg = (f"train.dtype=bfloat16: this CPU has no bf16 instructions (AVX-512 BF16 / AMX), so bf16 is emulated; "
           f"a bf16 matmul measured {bf16_slowdown():.1f}x the float32 time here. Use train.dtype=float32 on this "
           "machine (bf16 saves memory only where the hardware runs it)")
    warnings.warn(msg, stacklevel=2)
    return msg
