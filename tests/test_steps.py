"""The training path's batched weight gradients (nmt.steps) equal autograd's step by step."""
import pytest
import torch

from nmt import core
from nmt.decoder import Decoder, DecoderState, Memory
from nmt.steps import StepProducts


def test_one_weight_used_at_every_step_gets_the_summed_gradient():
    torch.manual_seed(0)
    weight = torch.randn(6, 4, requires_grad=True)
    xs = [torch.randn(3, 4, requires_grad=True) for _ in range(5)]

    def loss(product):
        h = torch.zeros(3, 6)
        total = 0
        for x in xs:
            h = torch.tanh(product(x) + h)  # each step depends on the previous one
            total = total + (h * torch.arange(6.0)).sum()
        return total

    expected = torch.autograd.grad(loss(lambda x: x @ weight.t()), [weight, *xs])
    got = torch.autograd.grad(loss(StepProducts(weight)), [weight, *xs])
    for e, g in zip(expected, got):
        assert torch.allclose(e, g, atol=1e-5)
    with torch.no_grad():  # decoding: a plain product, nothing kept
        products = StepProducts(weight)
        assert torch.equal(products(xs[0]), xs[0] @ weight.t()) and not products.inputs


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_decoder_gradients_match_the_step_by_step_decoder(cell):
    """Decoder.forward (layer 1's embedding product for all steps, batched weight
    gradients) gives the outputs and gradients of decoding's equations (nmt.core) at every t."""
    torch.manual_seed(1)
    B, T, S, E, H, K = 4, 6, 5, 8, 12, 10
    decoder = Decoder(cell, E, H, 2, K, "general", input_feeding=True).eval()  # no dropout: same masks
    emb = torch.randn(B, T, E, requires_grad=True)
    values = torch.randn(B, S, K)
    mask = torch.arange(S)[None, :] < torch.tensor([5, 3, 4, 1])[:, None]

    def gradients(run):
        decoder.zero_grad()
        memory = Memory(values, decoder.attention.project_keys(values), mask)
        state = DecoderState(torch.zeros(2, B, H), torch.zeros(2, B, H) if cell == "lstm" else None,
                             torch.zeros(B, H))
        out = run(memory, state)
        (out * torch.linspace(-1, 1, H)).sum().backward()
        return out.detach(), {name: p.grad.clone() for name, p in decoder.named_parameters()}, emb.grad.clone()

    def stepwise(memory, state):
        vectors = []
        for t in range(T):
            vector, state, _ = core.decoder_step(core.BATCHED, decoder, emb[:, t], state, memory)
            vectors.append(vector)
        return torch.stack(vectors, 1)

    out_a, grads_a, emb_a = gradients(stepwise)
    emb.grad = None
    out_b, grads_b, emb_b = gradients(lambda memory, state: decoder(emb, state, memory))
    assert torch.allclose(out_a, out_b, atol=1e-6)
    assert torch.allclose(emb_a, emb_b, atol=1e-5)
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5), name


def test_under_bf16_autocast_gradients_keep_the_weights_dtype():
    weight = torch.randn(6, 4, requires_grad=True)
    x = torch.randn(3, 4, requires_grad=True)
    with torch.autocast("cpu", torch.bfloat16):
        out = StepProducts(weight)(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    assert torch.allclose(weight.grad, torch.ones(3, 6).t() @ x.detach(), atol=0.05)
