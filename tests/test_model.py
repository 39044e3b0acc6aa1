import pytest
import torch

from nmt.attention import Attention
from nmt.config import DecodeConfig, config_from_dict
from nmt.data import batch_of
from nmt.model import Seq2Seq
from nmt.search import beam_search, greedy_search, sample_search


@pytest.mark.parametrize("kind", ["dot", "general", "mlp"])
def test_attention_masks_padding_and_normalises(kind):
    torch.manual_seed(0)
    att = Attention(kind, 6, 6)
    values = torch.randn(2, 5, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    context, weights = att(torch.randn(2, 6), att.project_keys(values), values, mask)
    assert context.shape == (2, 6) and weights.shape == (2, 5)
    assert torch.allclose(weights.sum(-1), torch.ones(2))
    assert (weights[0, 3:] == 0).all()
    assert torch.allclose(context[0], weights[0, :3] @ values[0, :3], atol=1e-6)


def test_general_attention_is_bilinear():
    att = Attention("general", 3, 4)
    q, values = torch.randn(1, 3), torch.randn(1, 2, 4)
    scores = torch.stack([q[0] @ att.key_proj.weight @ values[0, j] for j in range(2)])
    _, weights = att(q, att.project_keys(values), values, torch.ones(1, 2, dtype=torch.bool))
    assert torch.allclose(weights[0], torch.softmax(scores, 0), atol=1e-6)


@pytest.mark.parametrize("overrides", [
    {"cell": "lstm", "attention": "general"},
    {"cell": "gru", "attention": "mlp", "decoder_layers": 3},
    {"cell": "rnn", "attention": "dot", "decoder_hidden_size": 32, "bidirectional": True},
    {"cell": "lstm", "bidirectional": False, "input_feeding": False, "attention": "mlp"},
    {"cell": "lstm", "input_feeding": False, "decoder": "gnmt", "decoder_layers": 3},
    {"cell": "gru", "input_feeding": False, "decoder": "gnmt", "attention": "mlp"},
    {"tie_output": True, "share_embeddings": True, "decoder_hidden_size": 24, "embedding_size": 24},
])
def test_model_variants_train_and_decode(overrides):
    torch.manual_seed(0)
    cfg = config_from_dict({"model": dict({"embedding_size": 16, "encoder_hidden_size": 16,
                                           "decoder_hidden_size": 32, "encoder_layers": 2,
                                           "decoder_layers": 2, "tie_output": False,
                                           "share_embeddings": False}, **overrides)})
    model = Seq2Seq(cfg.model, 40, 40)
    batch = batch_of([[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]])
    logits = model(batch.src, batch.src_lengths, batch.tgt_in)
    assert logits.shape == (2 + 1 + 3 + 1, 40)  # real target positions only, end markers included
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    if cfg.model.tie_output:
        assert model.output.weight is model.tgt_embed.weight is model.src_embed.weight
    model.eval()
    greedy = greedy_search(model, batch)
    beam = beam_search(model, batch, DecodeConfig(beam_size=1))
    assert [h.tokens for h in greedy] == [b[0].tokens for b in beam]


@pytest.mark.parametrize("cell, input_feeding, decoder, attention", [
    ("lstm", True, "luong", "general"), ("lstm", False, "luong", "mlp"), ("gru", True, "luong", "mlp"),
    ("rnn", True, "luong", "dot"), ("gru", False, "luong", "general"), ("lstm", False, "gnmt", "dot"),
    ("gru", False, "gnmt", "general"), ("rnn", False, "gnmt", "mlp")])
def test_teacher_forced_logits_match_step_by_step_decoding(cell, input_feeding, decoder, attention):
    """Training scores only real target positions; they must be the very scores
    the step-by-step decoder (used by greedy and beam search) gives there -- also
    when the training path (batched products, nmt.steps) runs with gradients. This ties
    training's kernels (nn.LSTM, bmm: ``core.BATCHED``) to decoding's (``invariant.EXACT``)
    for every cell, attention and decoder."""
    torch.manual_seed(1)
    cfg = config_from_dict({"model": {"embedding_size": 16, "encoder_hidden_size": 16,
                                      "decoder_hidden_size": 32, "decoder_layers": 2, "cell": cell,
                                      "input_feeding": input_feeding, "decoder": decoder,
                                      "attention": attention, "tie_output": False}})
    model = Seq2Seq(cfg.model, 40, 40).eval()
    batch = batch_of([[5, 6, 7, 8], [9, 10], [11]], [[12], [13, 14, 15, 16], [17, 18]])
    logits = model(batch.src, batch.src_lengths, batch.tgt_in, batch.positions).detach()
    with torch.no_grad():
        assert torch.allclose(model(batch.src, batch.src_lengths, batch.tgt_in), logits, atol=1e-6)
        memory, state = model.encode(batch.src, batch.src_lengths)
        steps = []
        for t in range(batch.tgt_in.size(1)):
            logprobs, state, _ = model.decode_step(batch.tgt_in[:, t], state, memory)
            steps.append(logprobs)
    stepwise = torch.stack(steps, dim=1)[batch.tgt_in != 0]  # PAD = 0
    assert logits.shape == stepwise.shape == (2 + 5 + 3, 40)
    assert torch.allclose(torch.log_softmax(logits, -1), stepwise, atol=1e-5)


def test_dropout_keeps_each_element_with_probability_1_minus_p():
    from nmt.dropout import Dropout
    torch.manual_seed(2)
    drop = Dropout(0.3).train()
    x = torch.ones(200, 500)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.01
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))
    assert torch.equal(drop.eval()(x), x)
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_encoder_packing_planned_on_the_host_matches_torchs(cell):
    """The encoder packs with indices computed on the host (no device reads); its
    outputs and final states are those of torch's pack_padded_sequence path."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    from nmt.encoder import Encoder
    torch.manual_seed(3)
    encoder = Encoder(cell, 6, 5, 2, bidirectional=True).eval()
    lengths = torch.tensor([4, 7, 1, 7, 3, 4])  # ties and a length-1 sentence
    x = torch.randn(6, 8, 6)  # padded wider than the longest sentence
    outputs, finals = encoder(x, lengths)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    for k, layer in enumerate(encoder.layers):
        packed, state = layer(packed)
        h = state[0] if cell == "lstm" else state
        assert torch.allclose(finals[k][0], torch.cat(list(h), -1), atol=1e-6)
    expected, _ = pad_packed_sequence(packed, batch_first=True, total_length=8)
    assert torch.allclose(outputs, expected, atol=1e-6)
    assert torch.all(outputs[2, 1:] == 0)  # padding stays zero


def _ops_of_a_training_step(model, target_length: int) -> int:
    """aten ops dispatched by one forward and backward pass with targets of this length."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ops += 1
            return func(*args, **(kwargs or {}))

    batch = batch_of([[5, 6, 7], [8, 9]], [[10] * target_length, [11] * (target_length - 1)])
    with Count():
        model(batch.src, batch.src_lengths, batch.tgt_in, batch.positions).sum().backward()
    return Count.ops


@pytest.mark.parametrize("decoder", ["luong", "gnmt"])
def test_without_input_feeding_a_training_step_does_not_grow_with_the_target(decoder):
    """Each decoder layer is one recurrent call over all target steps and attention one
    batched product, so the ops a step launches do not depend on the target length;
    with input feeding they grow with it (the step loop)."""
    torch.manual_seed(0)
    model_cfg = {"embedding_size": 16, "encoder_hidden_size": 16, "decoder_hidden_size": 32,
                 "decoder_layers": 3, "tie_output": False, "decoder": decoder, "dropout": 0.1}
    sequence = Seq2Seq(config_from_dict({"model": dict(model_cfg, input_feeding=False)}).model, 40, 40)
    assert _ops_of_a_training_step(sequence, 4) == _ops_of_a_training_step(sequence, 40)
    if decoder == "luong":
        feeding = Seq2Seq(config_from_dict({"model": dict(model_cfg, input_feeding=True)}).model, 40, 40)
        assert _ops_of_a_training_step(feeding, 40) > 3 * _ops_of_a_training_step(feeding, 4)


def test_gnmt_needs_input_feeding_off():
    from nmt.errors import ConfigError
    with pytest.raises(ConfigError, match="model.decoder: gnmt has no input feeding"):
        config_from_dict({"model": {"decoder": "gnmt"}})


def test_a_gnmt_model_decodes_with_every_search_int8_and_in_an_ensemble():
    import copy
    from nmt.ensemble import Ensemble
    from nmt.quantize import quantize_int8
    torch.manual_seed(3)
    cfg = config_from_dict({"model": {"embedding_size": 16, "encoder_hidden_size": 16,
                                      "decoder_hidden_size": 32, "decoder_layers": 2, "tie_output": False,
                                      "input_feeding": False, "decoder": "gnmt"}})
    model = Seq2Seq(cfg.model, 40, 40).eval()
    batch = batch_of([[5, 6, 7, 8], [9, 10]], [[12], [13, 14]])
    greedy = greedy_search(model, batch, keep_attention=True)
    assert all(h.attention.shape[0] == len(h.tokens) + h.ended for h in greedy)
    assert [h.tokens for h in greedy] == [b[0].tokens for b in beam_search(model, batch, DecodeConfig(beam_size=1))]
    assert len(beam_search(model, batch, DecodeConfig(beam_size=3, n_best=3))[0]) == 3
    assert len(sample_search(model, batch, DecodeConfig(samples=1), seeds=[1, 2])) == 2
    int8 = quantize_int8(copy.deepcopy(model))
    for h, q in zip(greedy, greedy_search(int8, batch)):
        assert abs(h.score - q.score) < 0.05 * abs(h.score) + 0.05
    one = greedy_search(Ensemble([model]), batch)
    assert [(h.tokens, h.score) for h in one] == [(h.tokens, h.score) for h in greedy]
    other = copy.deepcopy(model)
    torch.nn.init.uniform_(other.output.weight, -0.1, 0.1)
    assert len(beam_search(Ensemble([model, other]), batch, DecodeConfig(beam_size=3))) == 2
