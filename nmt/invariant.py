"""Arithmetic whose result for one sentence does not depend on the rest of its batch.

Decoding promises that a sentence's pieces and scores are the same, bit for bit, in
any batch and at any position of it. Floating-point sums are not associative, so the
promise holds only where every sum a sentence's result comes from is formed in an
order set by that sentence alone. On the CPU (MKL and ATen), the leaks and how each is closed:

- A matrix product's rows are not computed alike: MKL picks its kernel by the shapes
  (rows, columns, threads) and its kernels sum in different orders. ``linear`` runs
  ``nmt/fixed_order.c`` instead, compiled on first use: each output is summed in one
  order set by the inner width alone, for any number of rows, in any tile, on any
  thread, and a lone sentence costs a matrix-vector product. Where it cannot run (a GPU,
  no AVX2, no C compiler) ``padded_linear`` forms ``weight @ x.T`` by MKL: a sentence
  is a column, at least ``MIN_COLUMNS`` of them (MKL has other kernels for fewer), inner
  widths over ``K_BLOCK`` a block at a time; see docs/BENCHMARKS.md and
  benchmarks/product_kernels.py.
- ``torch.sigmoid`` computes a tensor's vectorized part and its remainder by
  different formulas, so an element's value depends on where it falls in the tensor
  (and where threads split it); ``sigmoid`` uses exp, add and divide, which agree.
- Batched products (``torch.bmm``), used for attention in training, give results
  that depend on the number of matrices, their position and the padded source
  length; a softmax over a padded row depends on its padded length. ``dot`` forms
  each score as a sum over the key's own width; ``attend`` the softmax's denominator as
  a running sum along the source (``cumsum``: padding adds exact zeros at the end),
  and each context as a sum down the source positions, which ATen forms row by row
  from the first (padding rows add exact zeros).

``EXACT`` runs ``nmt.core``'s equations on these products, this sigmoid and these sums;
the encoder's layers one time step at a time. Every other step of decoding is
elementwise (exact), a reduction along the vocabulary (the same length for every row),
or integer (int8 products). Training keeps the fast batched kernels (``core.BATCHED``):
it makes no such promise.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shlex
import subprocess
import sysconfig
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from nmt import core
from nmt.encoder import packing

CHUNK_FLOATS = 1 << 20  # attention's products, a few sentences at a time (4 MB: in cache)
ROW_BLOCK = 4  # CUDA graphs are captured for sentence counts in multiples of this
K_BLOCK = 512  # inner widths up to this are one product; MKL splits wider ones across threads
MIN_COLUMNS = 16  # MKL sums fewer columns in other orders (below 2 on a Xeon, 12 on an EPYC)
KERNEL_CPUS = ("AVX2", "AVX512")  # torch's names of the CPUs fixed_order.c runs on
MIN_OUTPUTS = 16  # fewer weight rows are padded: MKL sums a product with very few otherwise


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with each row of x [..., in] summed in an order set by
    ``in`` alone (``nmt/fixed_order.c``); ``padded_linear`` where that kernel cannot run."""
    lib = kernel() if x.device.type == "cpu" else None
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if (lib is None or any(t.dtype != torch.float32 for t in tensors)
            or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))):
        return padded_linear(x, weight, bias)
    flat, weight = x.reshape(-1, x.size(-1)).contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    out = flat.new_empty(flat.size(0), weight.size(0))
    lib.nmt_fixed_linear(flat.data_ptr(), flat.size(0), flat.size(1), weight.data_ptr(),
                         weight.size(0), None if bias is None else bias.data_ptr(),
                         out.data_ptr(), torch.get_num_threads())
    return out.view(*x.shape[:-1], weight.size(0))


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """``nmt/fixed_order.c`` compiled once per source and compiler into the user's cache
    (``$XDG_CACHE_HOME/nmt``); None, with a warning, on a CPU without AVX2 and FMA or where
    it cannot be built. ``NMT_FIXED_ORDER=0`` turns it off (MKL's padded products)."""
    if os.environ.get("NMT_FIXED_ORDER", "1") == "0":
        return None
    if torch.backends.cpu.get_cpu_capability() not in KERNEL_CPUS:
        return None
    source = Path(__file__).with_name("fixed_order.c")
    compiler = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    flags = ["-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]
    key = hashlib.sha256(source.read_bytes() + " ".join(compiler + flags).encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nmt"
    target = cache / f"fixed_order-{key.hexdigest()[:16]}.so"
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")  # builders race safely
    try:
        if not target.exists():
            cache.mkdir(parents=True, exist_ok=True)
            subprocess.run(compiler + flags + [str(source), "-o", str(partial)], check=True,
                           capture_output=True, timeout=300)
            os.replace(partial, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        warnings.warn(f"nmt: the fixed-order kernel could not be built ({e} "
                      f"{detail.decode(errors='replace').strip()[:200]}); decoding uses MKL's "
                      "padded products, slower for a few sentences", stacklevel=2)
        return None
    finally:
        partial.unlink(missing_ok=True)
    c = ctypes
    lib.nmt_fixed_linear.argtypes = [c.c_void_p, c.c_int64, c.c_int64, c.c_void_p, c.c_int64,
                                     c.c_void_p, c.c_void_p, c.c_int]
    lib.nmt_fixed_linear.restype = None
    return lib


def padded_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                  ) -> torch.Tensor:
    """``linear`` by MKL, where the fixed-order kernel cannot run (a GPU, no C compiler):
    ``weight [out, in] @ x.T`` with at least ``MIN_COLUMNS`` columns, ``K_BLOCK`` of ``in``
    at a time."""
    flat = x.reshape(-1, x.size(-1))
    n, out_features = flat.size(0), weight.size(0)
    if n < MIN_COLUMNS:
        flat = torch.cat([flat, flat.new_zeros(MIN_COLUMNS - n, flat.size(1))])
    if out_features < MIN_OUTPUTS:
        weight = torch.cat([weight, weight.new_zeros(MIN_OUTPUTS - out_features, weight.size(1))])
        bias = None if bias is None else torch.cat([bias,
                                                    bias.new_zeros(MIN_OUTPUTS - out_features)])
    columns = flat.t()
    out = None
    for start in range(0, weight.size(1), K_BLOCK):
        w, c = weight[:, start:start + K_BLOCK], columns[start:start + K_BLOCK]
        if out is None:
            out = w @ c if bias is None else torch.addmm(bias.unsqueeze(1), w, c)
        else:
            out.add_(w @ c)
    # Contiguous: a sum over a transposed result's rows would run in another order.
    return out[:out_features, :n].t().contiguous().view(*x.shape[:-1], out_features)


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """1 / (1 + exp(-x)), elementwise in one formula wherever the element lies."""
    return torch.reciprocal(torch.exp(-x) + 1)


def attend(scores: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the source and the weighted sum of the values.

    scores: [B, k, S]; values: [B, S, K]; mask: [B, S], True at real positions.
    Returns context [B, k, K] and weights [B, k, S] (zero on padding).
    """
    scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
    weights = (scores - scores.amax(-1, keepdim=True)).exp_()  # max: exact in any order
    weights = weights / weights.cumsum(-1)[..., -1:]
    return (weights.unsqueeze(-1) * values.unsqueeze(1)).sum(2), weights


def dot(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """queries [B, k, Q] . keys [B, S, Q] -> scores [B, k, S], each a sum over Q alone."""
    return (queries.unsqueeze(2) * keys.unsqueeze(1)).sum(-1)


def by_sentences(attend_: Callable[..., tuple[torch.Tensor, torch.Tensor]], q: torch.Tensor,
                 keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``attend_(q, keys, values, mask)`` over the batch a few sentences at a time, so that its
    elementwise products (k x S x width floats a sentence) stay in the cache; q: [B, k, Q].
    Exact: no sentence's arithmetic involves another's."""
    per_sentence = q.size(1) * keys.size(1) * max(keys.size(2), values.size(2))
    step = max(1, CHUNK_FLOATS // per_sentence)
    if step >= len(keys):
        return attend_(q, keys, values, mask)
    parts = [attend_(q[i:i + step], keys[i:i + step], values[i:i + step], mask[i:i + step])
             for i in range(0, len(keys), step)]
    return (torch.cat([context for context, _ in parts]),
            torch.cat([weights for _, weights in parts]))


class ExactOps(core.BatchedOps):
    """``nmt.core``'s operations for decoding: each sentence's result from its own rows.
    A layer replaced by ``nmt.quantize`` brings its int8 product; the rest stays float."""
    sigmoid = staticmethod(sigmoid)
    dot = staticmethod(dot)

    def linear(self, x, layer):
        if isinstance(layer, nn.Linear):
            return linear(x, layer.weight, layer.bias)
        return layer(x)  # nmt.quantize.Int8Linear: exact integer sums, row by row

    def cell_products(self, cell, x, h):
        if not isinstance(cell, nn.RNNCellBase):  # nmt.quantize.Int8Cell
            return cell.products(x, h)
        return linear(x, cell.weight_ih, cell.bias_ih), linear(h, cell.weight_hh, cell.bias_hh)

    def weigh(self, hidden, v):
        if isinstance(v, nn.Linear):  # a sum over Q alone
            return (hidden * v.weight[0]).sum(-1)
        return v(hidden).squeeze(-1)  # int8: an exact integer product

    def attend(self, scores, values, mask):
        return attend(scores, values, mask)

    def per_sentence(self, attend_, query, memory):
        rows_, sentences = query.size(0), memory.keys.size(0)
        q = query.view(sentences, rows_ // sentences, -1)
        context, weights = by_sentences(attend_, q, memory.keys, memory.values, memory.mask)
        return context.view(rows_, -1), weights.view(rows_, -1)

    def encoder_layers(self, encoder, x, lengths):
        """``Encoder.forward``'s result with the layers' own weights run one time step at a
        time over the packed batch (at step t the sentences longer than t, longest first)."""
        batch, width = x.shape[:2]
        sizes, order, unsorted, index = packing(lengths, width)
        starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        unsorted, index = (torch.from_numpy(a).to(x.device) for a in (unsorted, index))
        data = x.reshape(batch * width, -1).index_select(0, index)  # [N, input_size] packed rows
        finals = []
        for layer in encoder.layers:
            directions = [self._direction(encoder.cell, layer, data, sizes.tolist(), starts, suffix)
                          for suffix in ("", "_reverse")[:encoder.directions]]
            data = torch.cat([out for out, _, _ in directions], dim=-1)
            h = torch.cat([h for _, h, _ in directions], dim=-1).index_select(0, unsorted)
            c = None if directions[0][2] is None else torch.cat(
                [c for _, _, c in directions], dim=-1).index_select(0, unsorted)
            finals.append((h, c))
        outputs = data.new_zeros(batch * width, data.size(1)).index_copy(0, index, data)
        return outputs.view(batch, width, -1), finals

    def _direction(self, kind: str, layer: nn.RNNBase, data: torch.Tensor, sizes: list[int],
                   starts: list[int], suffix: str
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One direction of one layer over packed rows data [N, in] (step t's rows are
        starts[t] .. starts[t] + sizes[t], the first sizes[t] sentences longest first):
        outputs [N, H] and each sentence's last h and c [B, H], longest first."""
        w_ih, w_hh, b_ih, b_hh = (getattr(layer, f"{name}_l0{suffix}")
                                  for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        x_gates = linear(data, w_ih, b_ih)  # all steps at once
        h = data.new_zeros(sizes[0], layer.hidden_size)  # the state rows, updated in place
        c = h.clone() if kind == "lstm" else None
        outputs = data.new_empty(len(data), layer.hidden_size)
        for t in (reversed(range(len(sizes))) if suffix else range(len(sizes))):
            n = sizes[t]
            steps = slice(starts[t], starts[t] + n)
            h_gates = linear(h[:n], w_hh, b_hh)
            new_h, new_c = core.cell_update(self, kind, x_gates[steps], h_gates, h[:n],
                                            None if c is None else c[:n])
            h[:n] = new_h
            outputs[steps] = new_h
            if c is not None:
                c[:n] = new_c
        return outputs, h[:sizes[0]], None if c is None else c[:sizes[0]]


EXACT = ExactOps()
