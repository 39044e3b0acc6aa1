"""int8 decoding on the CPU: int8 weights, activations quantized row by row.

Every linear map of the decoder (cells, attention projections, attentional combination,
output layer) and the bridge become ``Int8Linear``: int8 weights with one scale per output
unit; each input row is scaled by its own largest magnitude, rounded to int8, multiplied in
integers (``torch._int_mm``, exact int32 sums) and scaled back. A row's result depends on that
row alone, so int8 output is the same whatever the batch (unlike PyTorch's dynamic
quantization, one range per batch). The encoder and the embeddings stay float32 (a tied
output layer gets its own int8 copy).
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from nmt import core
from nmt.errors import ConfigError
from nmt.invariant import EXACT


@functools.cache
def _int_mm_is_exact() -> bool:
    """Whether ``torch._int_mm`` returns exact sums here, checked once against an int32
    product: oneDNN held to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2) on a CPU with VNNI returns wrong
    ones (torch 2.13). Where it does, the slower int32 product is used instead."""
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (17, 96), dtype=torch.int8, generator=g)
    b = torch.randint(-128, 128, (96, 40), dtype=torch.int8, generator=g)
    return torch.equal(torch._int_mm(a, b), a.int() @ b.int())


def _int_products(q: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """[M, K] int8 x [K, N] int8 -> [M, N] exact int32 sums."""
    return torch._int_mm(q, weight_t) if _int_mm_is_exact() else q.int() @ weight_t.int()


def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, K] float -> int8 [M, K] and scales [M, 1] with x ~= q * scale."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
    return torch.round(x / scale).to(torch.int8), scale


class Int8Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        q, scale = _quantize_rows(weight.detach().float())  # one scale per output unit
        self.register_buffer("weight_t", q.t())  # [in, out]: _int_mm takes it transposed
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, out]
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def of(cls, linear: nn.Linear) -> "Int8Linear":
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in] -> [..., out]."""
        rows = x.reshape(-1, x.size(-1))
        q, scale = _quantize_rows(rows)
        y = (_int_products(q, self.weight_t) * scale).mul_(self.weight_scale)  # int32 -> float
        if self.bias is not None:
            y.add_(self.bias)
        return y.reshape(*x.shape[:-1], y.size(-1))


class Int8Cell(nn.Module):
    """An nn.LSTMCell / GRUCell / RNNCell (tanh) with int8 input and state products."""

    def __init__(self, cell: nn.LSTMCell | nn.GRUCell | nn.RNNCell):
        super().__init__()
        self.kind = {nn.LSTMCell: "lstm", nn.GRUCell: "gru", nn.RNNCell: "rnn"}[type(cell)]
        if self.kind == "rnn" and cell.nonlinearity != "tanh":
            raise ValueError("only the tanh RNN cell is supported")
        if self.kind == "gru":  # the state product is gated separately: two products
            self.ih = Int8Linear(cell.weight_ih, cell.bias_ih)
            self.hh = Int8Linear(cell.weight_hh, cell.bias_hh)
        else:  # one product of [x; h] with [W_ih W_hh]: half the calls
            self.both = Int8Linear(torch.cat([cell.weight_ih, cell.weight_hh], dim=1),
                                   cell.bias_ih + cell.bias_hh)

    def products(self, x: torch.Tensor, h: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The input and state products, or (LSTM, RNN) their sum as one product."""
        if self.kind == "gru":
            return self.ih(x), self.hh(h)
        return self.both(torch.cat([x, h], dim=1)), None

    def forward(self, x: torch.Tensor, state):
        """The equations of torch's cells (``nmt.core.cell_update``) on these products."""
        h, c = state if self.kind == "lstm" else (state, None)
        h, c = core.cell_step(EXACT, self.kind, self, x, h, c)
        return (h, c) if self.kind == "lstm" else h


def int8_supported() -> bool:
    """Whether this torch multiplies int8 matrices on the CPU (torch >= 2.4 does)."""
    try:
        torch._int_mm(torch.ones(2, 8, dtype=torch.int8), torch.ones(8, 8, dtype=torch.int8))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace, in place, every nn.Linear and decoder cell of ``model`` (in eval mode) by its
    int8 counterpart; returns the model."""
    if not int8_supported():
        raise ConfigError(f"int8 decoding needs int8 matrix products on the CPU, which this "
                          f"torch {torch.__version__} lacks (torch >= 2.4 has them)")
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear.of(child))
            elif isinstance(child, (nn.LSTMCell, nn.GRUCell, nn.RNNCell)):
                setattr(module, name, Int8Cell(child))
    return model.eval()
