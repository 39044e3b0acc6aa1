"""Device and arithmetic policy: which device, which precision, which kernels.

One place decides what the hardware does fast, so that no path is picked that is emulated
(slow) or missing here. The CPU checks honour ``ONEDNN_MAX_CPU_ISA`` (oneDNN: products, LSTM
layers) and ``ATEN_CPU_CAPABILITY`` (ATen's vector kernels): with both set to AVX2 an AVX-512
machine behaves, and is treated, as an AVX2 one.
"""
from __future__ import annotations

import os

import torch

from nmt.errors import ConfigError


def pick_device(name: str) -> torch.device:
    """"auto", "cpu", "cuda" or "cuda:N" -> a device this torch can use (one GPU per torchrun
    rank)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: this torch sees no CUDA GPU")
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{os.environ['LOCAL_RANK']}"
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r}: expected cpu, cuda or cuda:N") from None


def _cpu_has(*features: str) -> bool:
    """Whether the CPU has any of ``features`` (names of torch.cpu.get_capabilities();
    older torch, without it, answers through its _is_*_supported checks)."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        have = capabilities()
        return any(have.get(feature, False) for feature in features)
    legacy = {"avx512_bf16": "_is_avx512_bf16_supported", "avx512_vnni": "_is_vnni_supported",
              "amx_bf16": "_is_amx_tile_supported", "amx_int8": "_is_amx_tile_supported"}
    return any(getattr(torch.cpu, legacy[f], lambda: False)() for f in features if f in legacy)


def onednn_allows(*features: str) -> bool:
    """Whether ONEDNN_MAX_CPU_ISA (unset: no limit) leaves oneDNN an ISA naming one of
    ``features``: AVX2_VNNI, AVX512_CORE_VNNI, AVX512_CORE_BF16, AVX512_CORE_AMX, AVX10_1_512
    (which includes bf16 and VNNI) ..."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap in ("", "ALL", "DEFAULT"):
        return True
    return cap.startswith("AVX10") or any(f in cap for f in features)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a CUDA GPU with bf16, or a CPU
    with AVX512-BF16 or AMX that PyTorch may use (elsewhere bf16 is emulated, slower than fp32,
    and oneDNN has no bf16 LSTM)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    hardware = _cpu_has("avx512_bf16", "amx_bf16")
    aten = torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "AVX2", "AVX")
    return hardware and aten and onednn_allows("BF16", "AMX")


def fast_int8(device: torch.device) -> bool:
    """Whether int8 products (``torch._int_mm``) have a fast kernel here: a CPU with VNNI
    (AVX512-VNNI, AVX-VNNI or AMX) that oneDNN may use; elsewhere oneDNN emulates them."""
    if device.type != "cpu":
        return False
    hardware = _cpu_has("avx512_vnni", "avx_vnni", "amx_int8")
    return hardware and onednn_allows("VNNI", "BF16", "AMX")


def use_bf16(precision: str, device: torch.device) -> bool:
    """Resolve ``train.precision`` (auto, fp32, bf16) for ``device``: auto takes bf16 on a CPU
    with native bf16 and fp32 on GPUs, where it measured faster (docs/BENCHMARKS.md)."""
    native = native_bf16(device)
    if precision == "bf16" and not native:
        raise ConfigError("train.precision: bf16 needs native bf16 arithmetic, which this "
                          f"{device.type} lacks (a GPU with bf16, or a CPU with AVX512-BF16 or "
                          "AMX); use fp32 or auto")
    return precision == "bf16" or (precision == "auto" and native and device.type == "cpu")


def fused_adam(device: torch.device) -> bool:
    """Whether Adam's fused kernel (all parameters in one pass) exists for ``device``: on
    GPUs, and on CPUs since torch 2.4."""
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return device.type == "cuda" or (major, minor) >= (2, 4)


def set_tf32(device: torch.device, enabled: bool) -> None:
    """TF32 tensor-core products for float32 on NVIDIA GPUs (``train.tf32``); no effect on CPUs."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def describe(device: torch.device, bf16: bool) -> str:
    """How a run computes, for the log: 'cpu (AVX2), fp32'."""
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"cpu ({torch.backends.cpu.get_cpu_capability()})")
    if bf16:
        return f"{where}, bf16 autocast"
    tf32 = device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    return f"{where}, {'fp32 (TF32 products)' if tf32 else 'fp32'}"


def memory_bytes(device: torch.device) -> int:
    """The device's memory: the GPU's, or the machine's RAM for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(model_factory, device: torch.device) -> None:
    """Refuse a model whose weights, gradients and Adam's two moments (16 bytes a parameter)
    alone exceed the device's memory, before allocating any of it: counted on the meta
    device, where modules have shapes and no storage."""
    with torch.device("meta"):
        n = sum(p.numel() for p in model_factory().parameters())
    need = 16 * n
    have = memory_bytes(device)
    if need > have:
        raise ConfigError(f"model: {n:,} parameters need {need / 2**30:,.1f} GiB for weights, "
                          f"gradients and Adam's state, more than this {device.type}'s "
                          f"{have / 2**30:,.1f} GiB; use smaller model sizes or fewer layers")
