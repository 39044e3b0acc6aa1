"""The machine a benchmark ran on, as one dict for its JSON: ``describe(device)``.

On CUDA: the card's name, memory and compute capability, and the float32
settings that decide whether matrix products and cuDNN's LSTMs run in TF32.
On the CPU: the model name and the instruction-set flags that decide which
kernels run (/proc/cpuinfo), what torch dispatches to, the ISA environment
overrides and the thread count. Always: torch, Python, the date and time.

Call it after the measurement, so that settings a program changed on the
way (nmt switching TF32 on or off, say) are recorded as they were used.
"""
from __future__ import annotations

import os
import platform
import time

import torch

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni")


def _try(read):
    """A setting's value, or the error reading it raised (torch refuses to read a
    legacy TF32 flag after the new fp32_precision API was used, and vice versa)."""
    try:
        return read()
    except Exception as err:  # noqa: BLE001 -- whatever it is, record it
        return f"unreadable: {type(err).__name__}: {str(err).splitlines()[0][:120]}"


def _cpuinfo() -> dict:
    """Model name and the flags of CPU_FLAGS present (Linux; empty elsewhere)."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:  # the first processor's entries are enough
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model is None:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or None
    return {"cpu_model": model, "cpu_flags": [f for f in CPU_FLAGS if f in flags]}


def _float32_settings() -> dict:
    """Whether float32 products may use TF32, in the legacy and the newer API."""
    settings = {
        "float32_matmul_precision": _try(torch.get_float32_matmul_precision),
        "cuda_matmul_allow_tf32": _try(lambda: torch.backends.cuda.matmul.allow_tf32),
        "cudnn_allow_tf32": _try(lambda: torch.backends.cudnn.allow_tf32),
    }
    # torch >= 2.9: per-backend fp32_precision ("tf32" or "ieee"; "none" inherits)
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        settings["cuda_matmul_fp32_precision"] = _try(lambda: torch.backends.cuda.matmul.fp32_precision)
        settings["cudnn_rnn_fp32_precision"] = _try(lambda: torch.backends.cudnn.rnn.fp32_precision)
    return settings


def _tf32(precision, legacy, matmul_precision=None) -> bool | None:
    """Whether TF32 is on, from whichever API answers (None: cannot tell)."""
    if precision in ("tf32", "ieee"):  # set explicitly in the newer API
        return precision == "tf32"
    if isinstance(legacy, bool):
        return legacy
    if matmul_precision in ("highest", "high", "medium"):
        return matmul_precision != "highest"
    return None


def describe(device: str | torch.device = "cpu") -> dict:
    """The machine and software a benchmark ran on (see the module docstring)."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    info: dict = {"device": str(device)}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update({
            "gpu": torch.cuda.get_device_name(index),
            "gpu_memory_gib": round(props.total_memory / 2 ** 30, 1),
            "gpu_capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
            "cudnn": _try(torch.backends.cudnn.version),
        })
        settings = _float32_settings()
        info["tf32_matmul"] = _tf32(settings.get("cuda_matmul_fp32_precision"),
                                    settings["cuda_matmul_allow_tf32"], settings["float32_matmul_precision"])
        info["tf32_cudnn_lstm"] = _tf32(settings.get("cudnn_rnn_fp32_precision"), settings["cudnn_allow_tf32"])
        info.update(settings)
    info.update(_cpuinfo())
    info.update({
        "cpu_capability": _try(torch.backends.cpu.get_cpu_capability),
        "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    })
    return info


def summary(info: dict) -> str:
    """One short line for a benchmark's printed summary."""
    if info.get("gpu"):
        tf32 = {True: "on", False: "off"}.get(info.get("tf32_matmul"), "unknown")
        where = f"{info['gpu']}, TF32 matmul {tf32}"
    else:
        where = f"{info.get('cpu_model') or 'CPU'} ({info.get('cpu_capability')}), {info['threads']} threads"
    return f"{where}, torch {info['torch']}"


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(describe(sys.argv[1] if len(sys.argv) > 1 else "cpu"), indent=2))
