"""The model's arithmetic, written once: cells, attention, the encoder's tail, the decoder step.

Every function here takes ``ops``, a set of operations (``Ops``) on opaque values, and a
model's modules for its weights. Three implementations of the operations run it:

- ``BatchedOps`` (here): PyTorch's batched kernels, with autograd -- training (``bmm``,
  softmax; the encoder's layers are ``nn.LSTM`` / ``GRU`` / ``RNN`` over packed batches);
- ``nmt.invariant.EXACT``: decoding, each sentence's result from its own rows alone
  (row-blocked products, fixed-order sums); int8 products where ``nmt.quantize`` has replaced
  a layer (the layer decides its product, the arithmetic around it stays);
- ``nmt.onnx_model.OnnxOps``: emits ONNX nodes, so the exported graphs are built from this code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from nmt.vocab import PAD

T = Any  # a tensor, or an ONNX value name


@dataclass
class Memory:
    """What the decoder attends to: the encoded source of a batch."""
    values: torch.Tensor  # [B, S, K] encoder outputs
    keys: torch.Tensor  # [B, S, Q] attention keys (projected once)
    mask: torch.Tensor  # [B, S] True at real source positions

    def select(self, index: torch.Tensor) -> "Memory":
        """Rows ``index`` (to drop finished sentences; beams share their sentence's row)."""
        return Memory(self.values.index_select(0, index), self.keys.index_select(0, index),
                      self.mask.index_select(0, index))


@dataclass
class DecoderState:
    h: torch.Tensor  # [L, B, H] hidden state per layer
    c: torch.Tensor | None  # [L, B, H] LSTM cell state per layer (None for GRU/RNN)
    feed: torch.Tensor  # [B, H] last attentional vector, undropped (input feeding); zeros at first

    def select(self, index: torch.Tensor) -> "DecoderState":
        return DecoderState(self.h.index_select(1, index),
                            None if self.c is None else self.c.index_select(1, index),
                            self.feed.index_select(0, index))

    def head(self, rows: int) -> "DecoderState":
        """The first ``rows`` rows, as views."""
        c = None if self.c is None else self.c[:, :rows]
        return DecoderState(self.h[:, :rows], c, self.feed[:rows])


class Ops(Protocol):
    """The operations the equations are written against. ``cat`` and ``split`` act on the
    last axis; ``linear(x, layer)`` is x W^T + b of an ``nn.Linear`` (or its int8 copy)."""
    def linear(self, x: T, layer: nn.Module) -> T: ...
    def cell_products(self, cell: nn.Module, x: T, h: T) -> tuple[T, T | None]: ...
    def add(self, a: T, b: T) -> T: ...
    def sub(self, a: T, b: T) -> T: ...
    def mul(self, a: T, b: T) -> T: ...
    def sigmoid(self, x: T) -> T: ...
    def tanh(self, x: T) -> T: ...
    def split(self, x: T, parts: int) -> list[T]: ...
    def cat(self, xs: list[T]) -> T: ...
    def embed(self, table: nn.Embedding, ids: T) -> T: ...
    def log_softmax(self, x: T) -> T: ...
    def layer(self, stacked: T, k: int) -> T: ...
    def stack(self, xs: list[T]) -> T: ...
    def mask(self, src: T) -> T: ...
    def zeros_like_rows(self, x: T, width: int) -> T: ...
    def dot(self, q: T, keys: T) -> T: ...
    def weigh(self, hidden: T, v: nn.Module) -> T: ...
    def outer_add(self, q: T, keys: T) -> T: ...
    def attend(self, scores: T, values: T, mask: T) -> tuple[T, T]: ...
    def per_sentence(self, attend: Callable[..., tuple[T, T]], query: T, memory: Memory
                     ) -> tuple[T, T]: ...
    def encoder_layers(self, encoder: nn.Module, x: T, lengths) -> tuple[T, list]: ...


def cell_update(ops: Ops, kind: str, x_gates: T, h_gates: T | None, h: T, c: T | None
                ) -> tuple[T, T | None]:
    """One step of an LSTM, GRU or tanh-RNN cell from its input and state products (biases
    included; for LSTM and RNN ``h_gates`` may be None when ``x_gates`` is already their sum),
    with PyTorch's gate order and equations (docs/model.md §2)."""
    if kind == "gru":
        x_r, x_z, x_n = ops.split(x_gates, 3)
        h_r, h_z, h_n = ops.split(h_gates, 3)
        r = ops.sigmoid(ops.add(x_r, h_r))
        z = ops.sigmoid(ops.add(x_z, h_z))
        n = ops.tanh(ops.add(x_n, ops.mul(r, h_n)))
        return ops.add(n, ops.mul(z, ops.sub(h, n))), None  # (1 - z) * n + z * h
    gates = x_gates if h_gates is None else ops.add(x_gates, h_gates)
    if kind == "rnn":
        return ops.tanh(gates), None
    i, f, _, o = ops.split(ops.sigmoid(gates), 4)  # one call for the three gates
    c = ops.add(ops.mul(f, c), ops.mul(i, ops.tanh(ops.split(gates, 4)[2])))
    return ops.mul(o, ops.tanh(c)), c


def cell_step(ops: Ops, kind: str, cell: nn.Module, x: T, h: T, c: T | None) -> tuple[T, T | None]:
    """``cell_update`` on the cell's own products of x [R, in] and h [R, H]."""
    x_gates, h_gates = ops.cell_products(cell, x, h)
    return cell_update(ops, kind, x_gates, h_gates, h, c)


def project_keys(ops: Ops, attention: nn.Module, values: T) -> T:
    """Encoder outputs [B, S, K] -> attention keys [B, S, Q], once per sentence."""
    return values if attention.kind == "dot" else ops.linear(values, attention.key_proj)


def attend(ops: Ops, attention: nn.Module, query: T, memory: Memory) -> tuple[T, T]:
    """Luong dot / general, Bahdanau mlp. query [B * k, Q], k >= 1 consecutive queries per
    sentence (beams share their sentence's keys and values) -> context [B * k, K] and
    weights [B * k, S] (zero on padding, rows sum to 1).

    dot / general: score = q . k (general's keys are W k, ``project_keys``);
    mlp:           score = v . tanh(W_q q + W_k k).
    """
    if attention.kind == "mlp":
        query = ops.linear(query, attention.query_proj)

    def scored(q: T, keys: T, values: T, mask: T) -> tuple[T, T]:  # q [B, k, Q]
        if attention.kind == "mlp":
            scores = ops.weigh(ops.tanh(ops.outer_add(q, keys)), attention.v)
        else:
            scores = ops.dot(q, keys)
        return ops.attend(scores, values, mask)
    return ops.per_sentence(scored, query, memory)


def encode(ops: Ops, model: nn.Module, src: T, lengths) -> tuple[Memory, DecoderState]:
    """src [B, S] ids (end marker included), lengths [B] -> memory and the decoder's initial
    state. The bridge maps each encoder layer's final state (both directions) to a decoder
    layer's: matched from the top, surplus decoder layers at the bottom start from the
    bottom encoder layer."""
    values, finals = ops.encoder_layers(model.encoder, ops.embed(model.src_embed, src), lengths)
    memory = Memory(values, project_keys(ops, model.decoder.attention, values), ops.mask(src))
    layers = len(model.decoder.cells)
    picks = [finals[max(0, len(finals) - layers + k)] for k in range(layers)]
    h = ops.stack([ops.tanh(ops.linear(f[0], model.bridge_h)) for f in picks])
    c = None
    if model.bridge_c is not None:
        c = ops.stack([ops.tanh(ops.linear(f[1], model.bridge_c)) for f in picks])
    return memory, DecoderState(h, c, ops.zeros_like_rows(values, model.cfg.decoder_hidden_size))


def decoder_step(ops: Ops, decoder: nn.Module, emb: T, state: DecoderState, memory: Memory
                 ) -> tuple[T, DecoderState, T]:
    """emb [R, E] -> the attentional vector [R, H], the new state, attention [R, S].

    The previous output's embedding (and, with input feeding, the previous attentional
    vector) goes through L stacked cells; one layer's state queries the source -- the top
    layer's ("luong") or the first layer's ("gnmt", whose context also goes into every layer
    above) -- and the attentional vector is tanh(W [context; h_top])."""
    x = ops.cat([emb, state.feed]) if decoder.input_feeding else emb
    hs, cs = [], []
    context = weights = None
    for k, cell in enumerate(decoder.cells):
        if k > decoder.query_layer:
            x = ops.cat([x, context])
        c = None if state.c is None else ops.layer(state.c, k)
        x, c = cell_step(ops, decoder.cell, cell, x, ops.layer(state.h, k), c)
        hs.append(x)
        cs.append(c)
        if k == decoder.query_layer:
            context, weights = attend(ops, decoder.attention, x, memory)
    vector = ops.tanh(ops.linear(ops.cat([context, x]), decoder.combine))
    return vector, DecoderState(ops.stack(hs), None if state.c is None else ops.stack(cs),
                                vector), weights


def decode_step(ops: Ops, model: nn.Module, prev: T, state: DecoderState, memory: Memory
                ) -> tuple[T, DecoderState, T]:
    """prev [R] last output ids -> log-probabilities [R, V], the new state, attention [R, S]."""
    vector, state, weights = decoder_step(ops, model.decoder, ops.embed(model.tgt_embed, prev),
                                          state, memory)
    return ops.log_softmax(ops.linear(vector, model.output)), state, weights


class BatchedOps:
    """Training's kernels: ``F.linear``, ``bmm``, softmax, ``torch.sigmoid``; differentiable."""
    add, sub, mul = staticmethod(torch.add), staticmethod(torch.sub), staticmethod(torch.mul)
    sigmoid, tanh = staticmethod(torch.sigmoid), staticmethod(torch.tanh)

    def linear(self, x, layer):
        return layer(x)

    def cell_products(self, cell, x, h):
        return F.linear(x, cell.weight_ih, cell.bias_ih), F.linear(h, cell.weight_hh, cell.bias_hh)

    def split(self, x, parts):
        return list(x.chunk(parts, -1))

    def cat(self, xs):
        return torch.cat(xs, dim=-1)

    def embed(self, table, ids):
        return table(ids)

    def log_softmax(self, x):
        return torch.log_softmax(x, dim=-1)

    def layer(self, stacked, k):
        return stacked[k]

    def stack(self, xs):
        return torch.stack(xs)

    def mask(self, src):
        return src != PAD  # from ids on the device: no host transfer

    def zeros_like_rows(self, x, width):
        return x.new_zeros(x.size(0), width)

    def dot(self, q, keys):
        return torch.bmm(q, keys.transpose(1, 2))

    def weigh(self, hidden, v):
        return v(hidden).squeeze(-1)

    def outer_add(self, q, keys):
        return keys.unsqueeze(1) + q.unsqueeze(2)  # [B, k, S, Q]

    def attend(self, scores, values, mask):
        weights = torch.softmax(scores.masked_fill(~mask.unsqueeze(1), float("-inf")), dim=-1)
        return torch.bmm(weights, values), weights

    def per_sentence(self, attend_, query, memory):
        rows, sentences = query.size(0), memory.keys.size(0)
        q = query.view(sentences, rows // sentences, -1)
        context, weights = attend_(q, memory.keys, memory.values, memory.mask)
        return context.reshape(rows, -1), weights.reshape(rows, -1)

    def encoder_layers(self, encoder, x, lengths):
        return encoder(x, lengths)


BATCHED = BatchedOps()
