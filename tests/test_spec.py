"""The textbook model the project grew from (docs/model.md §1-2, 4-6), checked on the package's layers."""
import torch
from torch import nn

from nmt.decoder import Decoder, DecoderState, Memory
from nmt.encoder import Encoder


def test_worked_example_with_the_package_recurrent_layer():
    """docs/model.md §1: state [0.537, 0.462] then [0.860, 0.884]; outputs 1.56 then 2.73."""
    enc = Encoder("rnn", input_size=1, hidden_size=2, num_layers=1, bidirectional=False)
    w_rnn = torch.tensor([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])  # rows: h[0], h[1], x
    rnn = enc.layers[0]
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(w_rnn[:2].T)
        rnn.weight_ih_l0.copy_(w_rnn[2:].T)
        rnn.bias_ih_l0.copy_(torch.tensor([0.1, -0.1]))
        rnn.bias_hh_l0.zero_()
    out_layer = nn.Linear(2, 1)
    with torch.no_grad():
        out_layer.weight.copy_(torch.tensor([[1.0, 2.0]]))
        out_layer.bias.fill_(0.1)
    enc.eval()
    states, finals = enc(torch.tensor([[[1.0], [2.0]]]), torch.tensor([2]))
    assert torch.allclose(states[0], torch.tensor([[0.537, 0.462], [0.860, 0.884]]), atol=5e-4)
    outputs = out_layer(states[0]).squeeze(-1)
    assert torch.allclose(outputs, torch.tensor([1.56, 2.73]), atol=5e-3)
    assert torch.equal(finals[0][0][0], states[0, 1])


def test_lstm_gate_equations_match_the_model_lstm():
    """docs/model.md §2, gate by gate, against the encoder's LSTM (torch gate order: i, f, z, o)."""
    torch.manual_seed(0)
    enc = Encoder("lstm", input_size=3, hidden_size=4, num_layers=1, bidirectional=False).eval()
    lstm = enc.layers[0]
    x = torch.randn(1, 5, 3)
    out, finals = enc(x, torch.tensor([5]))
    w = torch.cat([lstm.weight_hh_l0, lstm.weight_ih_l0], dim=1)  # acts on [h_{t-1}, x_t]
    b = lstm.bias_ih_l0 + lstm.bias_hh_l0
    w_i, w_f, w_z, w_o = w.chunk(4)
    b_i, b_f, b_z, b_o = b.chunk(4)
    h, c = torch.zeros(4), torch.zeros(4)
    for t in range(5):
        hx = torch.cat([h, x[0, t]])
        z = torch.tanh(w_z @ hx + b_z)
        i = torch.sigmoid(w_i @ hx + b_i)
        f = torch.sigmoid(w_f @ hx + b_f)
        o = torch.sigmoid(w_o @ hx + b_o)
        c = f * c + i * z
        h = o * torch.tanh(c)
        assert torch.allclose(out[0, t], h, atol=1e-6)
    assert torch.allclose(finals[0][0][0], h, atol=1e-6)
    assert torch.allclose(finals[0][1][0], c, atol=1e-6)


def _one_direction(lstm: nn.LSTM, suffix: str) -> nn.LSTM:
    single = nn.LSTM(lstm.input_size, lstm.hidden_size, batch_first=True)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(single, f"{name}_l0").copy_(getattr(lstm, f"{name}_l0{suffix}"))
    return single


def test_bidirectional_is_two_independent_directions_concatenated():
    """docs/model.md §4, with padding: the backward direction starts at each sentence's own end."""
    torch.manual_seed(1)
    enc = Encoder("lstm", input_size=3, hidden_size=4, num_layers=1, bidirectional=True).eval()
    fwd, bwd = _one_direction(enc.layers[0], ""), _one_direction(enc.layers[0], "_reverse")
    x = torch.randn(2, 6, 3)
    lengths = torch.tensor([6, 4])
    out, finals = enc(x, lengths)
    for b, n in enumerate(lengths.tolist()):
        seq = x[b:b + 1, :n]
        f_out, (f_h, _) = fwd(seq)
        b_out, (b_h, _) = bwd(seq.flip(1))
        assert torch.allclose(out[b, :n, :4], f_out[0], atol=1e-6)
        assert torch.allclose(out[b, :n, 4:], b_out[0].flip(0), atol=1e-6)
        assert torch.allclose(finals[0][0][b], torch.cat([f_h[0, 0], b_h[0, 0]]), atol=1e-6)
        assert torch.all(out[b, n:] == 0)  # padding stays out of the result


def test_padding_never_changes_a_result():
    torch.manual_seed(2)
    enc = Encoder("gru", input_size=3, hidden_size=4, num_layers=2, bidirectional=True).eval()
    short = torch.randn(1, 3, 3)
    alone, finals_alone = enc(short, torch.tensor([3]))
    batch = torch.cat([torch.cat([short, torch.randn(1, 4, 3)], 1), torch.randn(1, 7, 3)])
    together, finals_together = enc(batch, torch.tensor([3, 7]))
    assert torch.allclose(together[0, :3], alone[0], atol=1e-6)
    for (h1, _), (h2, _) in zip(finals_alone, finals_together):
        assert torch.allclose(h1[0], h2[0], atol=1e-6)


def test_stacking_feeds_each_layer_output_to_the_next():
    """docs/model.md §5: layer k's output at step t is layer k+1's input at step t; weights differ."""
    torch.manual_seed(3)
    enc = Encoder("lstm", input_size=3, hidden_size=4, num_layers=3, bidirectional=True).eval()
    x = torch.randn(2, 5, 3)
    out, finals = enc(x, torch.tensor([5, 5]))
    y = x
    for layer in enc.layers:
        y, _ = layer(y)
    assert torch.allclose(out, y, atol=1e-6)
    assert len(finals) == 3
    assert not torch.equal(enc.layers[1].weight_hh_l0, enc.layers[2].weight_hh_l0)


def test_encoder_dropout_between_layers_never_across_time():
    """docs/model.md §6: inputs into layer 1 and between layers are dropped; the recurrence is not."""
    torch.manual_seed(4)
    p = 0.5
    enc = Encoder("lstm", input_size=8, hidden_size=8, num_layers=2, bidirectional=True, dropout=p)
    enc.train()
    seen = []
    hooks = [layer.register_forward_hook(lambda m, inp, out: seen.append((m, inp[0].data, out[0].data)))
             for layer in enc.layers]
    x = torch.randn(3, 6, 8)
    enc(x, torch.tensor([6, 6, 6]))
    for hook in hooks:
        hook.remove()
    (l1, in1, out1), (l2, in2, out2) = seen
    # layer 1's input is the dropped input: each element zeroed or scaled by 1/(1-p)
    packed_x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([6, 6, 6]), batch_first=True).data
    scaled = packed_x / (1 - p)
    assert torch.all((in1 == 0) | torch.isclose(in1, scaled))
    assert (in1 == 0).any()
    # layer 2's input is layer 1's output, dropped
    assert torch.all((in2 == 0) | torch.isclose(in2, out1 / (1 - p)))
    assert (in2 == 0).any()
    # within a layer nothing is dropped across time: the output equals a clean run on that input
    for layer, inp, out in seen:
        batch_sizes = torch.full((6,), 3, dtype=torch.long)
        clean, _ = layer(torch.nn.utils.rnn.PackedSequence(inp, batch_sizes))
        assert torch.allclose(clean.data, out, atol=1e-6)


def test_decoder_dropout_never_touches_the_carried_state():
    torch.manual_seed(5)
    dec = Decoder("lstm", embedding_size=6, hidden_size=8, num_layers=2, memory_size=8,
                  attention="general", input_feeding=True, dropout=0.5).train()
    dropped = []  # what dropout is given, in order
    drop = dec.dropout.forward
    dec.dropout.forward = lambda x: dropped.append(x) or drop(x)
    state = DecoderState(torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.randn(3, 8))
    values = torch.randn(3, 4, 8)
    memory = Memory(values, dec.attention.project_keys(values), torch.ones(3, 4, dtype=torch.bool))
    emb = torch.randn(3, 1, 6)
    out = dec(emb, state, memory)[:, 0]
    # dropped: layer 1's input in its two parts (the embeddings, the fed vector), layer 2's
    # input (layer 1's new state), and the attentional vector -- never a state carried over
    assert len(dropped) == 4
    assert torch.equal(dropped[0], emb) and torch.equal(dropped[1], state.feed)
    for x in dropped:
        for carried in (*state.h, *state.c):
            assert x.shape != carried.shape or not torch.equal(x, carried)
    # the fed-back vector is kept undropped; the output layer gets the dropped copy
    vector = dropped[3]
    assert not (vector == 0).any()
    assert torch.all((out == 0) | torch.isclose(out, vector * 2)) and (out == 0).any()
