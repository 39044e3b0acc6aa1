"""The attention decoder: stacked recurrent cells, Luong attention, input feeding."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nmt import core
from nmt.attention import Attention
from nmt.core import DecoderState, Memory
from nmt.dropout import Dropout
from nmt.steps import StepProducts

CELL_TYPES = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}


class Decoder(nn.Module):
    """Holds the decoder's weights and runs it teacher-forced (training); the equations and
    decoding's step are ``nmt.core.decoder_step`` (``kind``: "luong" or "gnmt"). Dropout: on the
    input into layer 1, between layers, on the attentional vector, never on the state carried
    between steps (docs/model.md §6). Without input feeding no layer's input depends on an
    earlier step's attention, so training runs each layer as one recurrent call over all steps
    (cuDNN, oneDNN) and attention for all steps as one batched product."""

    def __init__(self, cell: str, embedding_size: int, hidden_size: int, num_layers: int,
                 memory_size: int, attention: str, input_feeding: bool = True,
                 dropout: float = 0.0, kind: str = "luong"):
        super().__init__()
        self.cell = cell
        self.hidden_size = hidden_size
        self.input_feeding = input_feeding
        self.query_layer = 0 if kind == "gnmt" else num_layers - 1  # the layer that attends
        first = embedding_size + (hidden_size if input_feeding else 0)
        above = hidden_size + (memory_size if kind == "gnmt" else 0)  # layers above layer 1
        self.cells = nn.ModuleList(CELL_TYPES[cell](first if k == 0 else above, hidden_size)
                                   for k in range(num_layers))
        self.attention = Attention(attention, hidden_size, memory_size)
        self.combine = nn.Linear(memory_size + hidden_size, hidden_size, bias=False)
        self.dropout = Dropout(dropout)

    def forward(self, emb: torch.Tensor, state: DecoderState, memory: Memory) -> torch.Tensor:
        """Teacher-forced decoding. emb: [B, T, E] -> attentional vectors [B, T, H]: the
        computation of ``nmt.core.decoder_step`` at every t, with layer 1's product with the
        embeddings for all steps in one product and each weight's gradient one product over all
        steps (``nmt.steps``). Layer 1's input [emb; feed] is dropped in two parts, each element
        still kept with probability 1 - p."""
        if not self.input_feeding:
            return self._forward_sequence(emb, state, memory)
        cells = self.cells
        size = emb.size(2)
        emb_gates = F.linear(self.dropout(emb), cells[0].weight_ih[:, :size],
                             cells[0].bias_ih).unbind(1)
        feed_products = StepProducts(cells[0].weight_ih[:, size:])  # input feeding's part
        input_products = [None] + [StepProducts(cell.weight_ih) for cell in cells[1:]]
        state_products = [StepProducts(cell.weight_hh) for cell in cells]
        combine = StepProducts(self.combine.weight)
        h = list(state.h)
        c = [None] * len(cells) if state.c is None else list(state.c)
        feed = state.feed
        vectors = []
        for gates in emb_gates:  # [B, G] per step
            for k, cell in enumerate(cells):
                if k == 0:
                    x_gates = gates + feed_products(self.dropout(feed))
                else:
                    x_gates = input_products[k](self.dropout(h[k - 1])) + cell.bias_ih
                h_gates = state_products[k](h[k]) + cell.bias_hh
                h[k], c[k] = core.cell_update(core.BATCHED, self.cell, x_gates, h_gates, h[k],
                                              c[k])
            context, _ = self.attention(h[-1], memory.keys, memory.values, memory.mask)
            feed = torch.tanh(combine(torch.cat([context, h[-1]], dim=-1)))
            vectors.append(self.dropout(feed))
        return torch.stack(vectors, dim=1)

    def _forward_sequence(self, emb: torch.Tensor, state: DecoderState, memory: Memory
                          ) -> torch.Tensor:
        """``forward`` without input feeding: each layer one recurrent call over all T steps,
        attention for all steps one batched product. emb: [B, T, E] -> vectors [B, T, H]."""
        batch, steps = emb.shape[:2]
        x = emb
        context = None  # the attending layer's, read by the layers above it (gnmt)
        for k, cell in enumerate(self.cells):
            if k > self.query_layer:
                x = torch.cat([x, context], dim=-1)
            x = self._layer_over_steps(cell, self.dropout(x), state.h[k],
                                       None if state.c is None else state.c[k])
            if k == self.query_layer:
                context, _ = self.attention(x.reshape(batch * steps, -1), memory.keys,
                                            memory.values, memory.mask)
                context = context.view(batch, steps, -1)
        return self.dropout(torch.tanh(self.combine(torch.cat([context, x], dim=-1))))

    def _layer_over_steps(self, cell: nn.RNNCellBase, x: torch.Tensor, h: torch.Tensor,
                          c: torch.Tensor | None) -> torch.Tensor:
        """One layer over all steps, with the cell's own weights: x [B, T, in] -> [B, T, H]."""
        weights = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
        # torch.lstm / gru / rnn_tanh: the calls nn.LSTM / GRU / RNN make (batch first, 1 layer)
        if self.cell == "lstm":
            return torch.lstm(x, (h[None], c[None]), weights, True, 1, 0.0, self.training, False,
                              True)[0]
        run = torch.gru if self.cell == "gru" else torch.rnn_tanh
        return run(x, h[None], weights, True, 1, 0.0, self.training, False, True)[0]

