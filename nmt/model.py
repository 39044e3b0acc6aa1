"""The encoder-decoder: embeddings, encoder, bridge, decoder, output layer."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nmt import core
from nmt.config import ModelConfig
from nmt.core import DecoderState, Memory
from nmt.decoder import Decoder
from nmt.encoder import Encoder
from nmt.invariant import EXACT
from nmt.vocab import PAD


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.src_embed = nn.Embedding(src_vocab_size, cfg.embedding_size, padding_idx=PAD)
        self.tgt_embed = (self.src_embed if cfg.share_embeddings else
                          nn.Embedding(tgt_vocab_size, cfg.embedding_size, padding_idx=PAD))
        self.encoder = Encoder(cfg.cell, cfg.embedding_size, cfg.encoder_hidden_size,
                               cfg.encoder_layers, cfg.bidirectional, cfg.dropout)
        enc_size = self.encoder.output_size
        # The bridge: encoder final states -> the decoder's initial state (nmt.core.encode).
        self.bridge_h = nn.Linear(enc_size, cfg.decoder_hidden_size)
        self.bridge_c = (nn.Linear(enc_size, cfg.decoder_hidden_size) if cfg.cell == "lstm"
                         else None)
        self.decoder = Decoder(cfg.cell, cfg.embedding_size, cfg.decoder_hidden_size,
                               cfg.decoder_layers, enc_size, cfg.attention, cfg.input_feeding,
                               cfg.dropout, cfg.decoder)
        self.output = nn.Linear(cfg.decoder_hidden_size, tgt_vocab_size)
        self.reset_parameters()
        if cfg.tie_output:
            self.output.weight = self.tgt_embed.weight

    def reset_parameters(self) -> None:
        # Uniform(-0.1, 0.1) everywhere, the long-standing recipe for LSTM NMT.
        for p in self.parameters():
            nn.init.uniform_(p, -0.1, 0.1)
        with torch.no_grad():
            self.src_embed.weight[PAD].zero_()
            self.tgt_embed.weight[PAD].zero_()

    def encode(self, src: torch.Tensor, lengths: np.ndarray | torch.Tensor
               ) -> tuple[Memory, DecoderState]:
        """src: [B, S] ids (end marker included), lengths: [B] -> memory, initial state; each
        sentence's from its own rows alone (``nmt.core`` on ``nmt.invariant.EXACT``)."""
        return core.encode(EXACT, self, src, lengths)

    def forward(self, src: torch.Tensor, lengths: np.ndarray | torch.Tensor, tgt_in: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits [N, V] for decoder inputs tgt_in [B, T], at its N real
        (non-padding) positions in row-major order: the costly output layer is spent only where a
        target token is. ``positions`` [N] (indices into tgt_in.view(-1), ``Batch.positions``)
        saves finding them on the device, which would wait for the GPU."""
        if positions is None:
            positions = (tgt_in != PAD).view(-1).nonzero().squeeze(1)
        memory, state = core.encode(core.BATCHED, self, src, lengths)
        vectors = self.decoder(self.tgt_embed(tgt_in), state, memory)  # [B, T, H]
        return self.output(vectors.flatten(0, 1).index_select(0, positions))

    def decode_step(self, prev: torch.Tensor, state: DecoderState, memory: Memory
                    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """prev: [B] last output ids -> log-probabilities [B, V], new state, attention [B, S];
        each row's from that row alone (``nmt.core.decode_step`` on ``nmt.invariant.EXACT``)."""
        return core.decode_step(EXACT, self, prev, state, memory)
