"""Device policy: what the CPU (or GPU) can do fast, honouring the variables that hold PyTorch below it."""
import os
import subprocess
import sys

import pytest
import torch

from nmt import device
from nmt.config import ModelConfig
from nmt.model import Seq2Seq
from nmt.errors import ConfigError

PROBE = ("import torch; from nmt.device import native_bf16, fast_int8; "
         "torch.nn.LSTM(8, 8)(torch.randn(2, 3, 8)); "
         "cpu = torch.device('cpu'); print(torch.backends.cpu.get_cpu_capability(), native_bf16(cpu), fast_int8(cpu))")


def probe(**env) -> tuple[str, str]:
    """(oneDNN's verbose output, the probe's line) in a fresh process with ``env``."""
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                          env=dict(os.environ, ONEDNN_VERBOSE="1", **env))
    return done.stdout, done.stdout.strip().splitlines()[-1]


def test_the_variables_that_hold_pytorch_below_the_cpu_are_honoured():
    """CI reruns the suite with ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 to stand in for
    an AVX2-only CPU: both libraries must obey (shown here with a cap below any x86-64 CPU's)."""
    verbose, line = probe(ONEDNN_MAX_CPU_ISA="SSE41", ATEN_CPU_CAPABILITY="default")
    assert "isa:Intel SSE4.1" in verbose
    assert line == "DEFAULT False False"
    verbose, line = probe(ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
    assert "isa:Intel AVX2" in verbose and line.endswith("False False")


def test_bf16_without_hardware_support_is_refused(monkeypatch):
    monkeypatch.setattr(device, "native_bf16", lambda dev: False)
    with pytest.raises(ConfigError, match="train.precision: bf16 needs native bf16"):
        device.use_bf16("bf16", torch.device("cpu"))
    assert device.use_bf16("auto", torch.device("cpu")) is False
    monkeypatch.setattr(device, "native_bf16", lambda dev: True)
    assert device.use_bf16("auto", torch.device("cpu")) is True
    assert device.use_bf16("fp32", torch.device("cpu")) is False
    assert device.use_bf16("auto", torch.device("cuda")) is False  # bf16 did not pay on GPUs
    assert device.use_bf16("bf16", torch.device("cuda")) is True


@pytest.mark.parametrize("cap, allowed", [("", True), ("ALL", True), ("avx2", False), ("AVX512_CORE", False),
                                          ("AVX512_CORE_VNNI", False), ("AVX512_CORE_BF16", True),
                                          ("AVX512_CORE_AMX", True), ("AVX10_1_512", True)])
def test_bf16_is_native_only_where_onednn_may_use_it(monkeypatch, cap, allowed):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes a bf16 CPU an AVX2 one: oneDNN then has no bf16
    LSTM primitive, so bf16 must not be chosen (auto) or accepted (bf16)."""
    monkeypatch.setattr(device, "_cpu_has", lambda *features: "avx512_bf16" in features)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert device.native_bf16(torch.device("cpu")) is allowed
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # ATEN_CPU_CAPABILITY=avx2
    assert device.native_bf16(torch.device("cpu")) is False


def test_int8_is_fast_only_with_vnni(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(device, "_cpu_has", lambda *features: False)  # AVX2 alone
    assert not device.fast_int8(torch.device("cpu"))
    for vnni in ("avx512_vnni", "avx_vnni", "amx_int8"):  # AVX-512 VNNI, AVX-VNNI (AVX2 CPUs), AMX
        monkeypatch.setattr(device, "_cpu_has", lambda *features, vnni=vnni: vnni in features)
        assert device.fast_int8(torch.device("cpu"))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not device.fast_int8(torch.device("cpu"))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    assert device.fast_int8(torch.device("cpu"))
    assert not device.fast_int8(torch.device("cuda"))


def test_the_memory_check_counts_every_parameter_before_allocating(monkeypatch):
    """check_fits counts on the meta device, before any weight exists: the real model's count."""
    cfg = ModelConfig(cell="gru", encoder_layers=3, attention="mlp")
    real = sum(p.numel() for p in Seq2Seq(cfg, 300, 300).parameters())
    monkeypatch.setattr(device, "memory_bytes", lambda where: 16 * real - 1)
    with pytest.raises(ConfigError, match=f"^model: {real:,} parameters need "):
        device.check_fits(lambda: Seq2Seq(cfg, 300, 300), torch.device("cpu"))
    monkeypatch.setattr(device, "memory_bytes", lambda where: 16 * real)
    device.check_fits(lambda: Seq2Seq(cfg, 300, 300), torch.device("cpu"))  # fits: no error
