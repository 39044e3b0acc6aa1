"""Every search path decodes every model kind search is typed against (``DecodableModel``):
an ensemble of a model with itself is that model bit for bit, and a two-model ensemble keeps
each path's promises (sorted n-best lists, the rules, attention of the right shape)."""
import copy
from dataclasses import replace

import pytest
import torch

from nmt.config import DecodeConfig, config_from_dict
from nmt.ensemble import Ensemble
from nmt.graphs import GraphedSteps
from nmt.model import Seq2Seq
from nmt.onnx_model import OnnxModel
from nmt.search import DecodableModel, normalised_score
from nmt.translate import decode_corpus

VOCAB = 14
SENTENCES = [[5, 6, 7, 8, 9], [10, 3], [4, 4, 11, 12, 13, 5, 6], [7]]
PATHS = {
    "greedy": DecodeConfig(beam_size=1),
    "beam": DecodeConfig(beam_size=3),
    "n-best": DecodeConfig(beam_size=4, n_best=4),
    "no-repeat-ngram": DecodeConfig(beam_size=3, no_repeat_ngram_size=2),
    "min-length": DecodeConfig(beam_size=1, min_length=6, max_length_ratio=3.0),
    "sampling": DecodeConfig(samples=3, temperature=1.5, top_k=5, seed=4),
    "gnmt-penalty": DecodeConfig(beam_size=3, n_best=3, length_penalty=0.6, length_penalty_type="gnmt"),
}


def small_model(seed: int) -> Seq2Seq:
    torch.manual_seed(seed)
    cfg = config_from_dict({"model": {"embedding_size": 16, "encoder_hidden_size": 16,
                                      "decoder_hidden_size": 32, "decoder_layers": 2,
                                      "tie_output": False, "share_embeddings": False}})
    return Seq2Seq(cfg.model, VOCAB, VOCAB).eval()


def decoded(model, decode: DecodeConfig, cuda_graphs: bool = False) -> list[list[tuple]]:
    found = decode_corpus(model, SENTENCES, replace(decode, batch_size=3, cuda_graphs=cuda_graphs),
                          keep_attention=True, never=(1,))
    return [[(h.tokens, h.score, h.ended, h.attention) for h in hyps] for hyps in found]


def assert_same(got: list[list[tuple]], want: list[list[tuple]]) -> None:
    assert [[h[:3] for h in hyps] for hyps in got] == [[h[:3] for h in hyps] for hyps in want]
    for got_hyps, want_hyps in zip(got, want):
        for g, w in zip(got_hyps, want_hyps):
            assert torch.equal(g[3], w[3])


def test_every_model_kind_is_a_decodable_model():
    model = small_model(0)
    for candidate in (model, Ensemble([model, small_model(1)]), GraphedSteps(model)):
        assert isinstance(candidate, DecodableModel)
    assert issubclass(OnnxModel, DecodableModel)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_an_ensemble_of_a_model_with_itself_is_that_model(path, cuda_graphs):
    model = small_model(0)
    twice = Ensemble([model, copy.deepcopy(model)])
    assert_same(decoded(twice, PATHS[path], cuda_graphs), decoded(model, PATHS[path]))


@pytest.mark.parametrize("path", PATHS)
def test_a_two_model_ensemble_keeps_every_paths_promises(path):
    decode = PATHS[path]
    ensemble = Ensemble([small_model(0), small_model(1)])
    found = decoded(ensemble, decode)
    assert_same(decoded(ensemble, decode, cuda_graphs=True), found)  # eager replay on the CPU
    width = decode.samples or decode.n_best
    for sentence, hyps in zip(SENTENCES, found):
        assert 1 <= len(hyps) <= width and (decode.samples == 0 or len(hyps) == decode.samples)
        for tokens, _, ended, attention in hyps:
            assert 1 not in tokens  # ``never``
            assert attention.shape[0] == len(tokens) + ended  # a row per decoder step
            assert (attention[:, len(sentence) + 1:] == 0).all()  # none on the batch's padding
            assert torch.allclose(attention.sum(1), torch.ones(len(attention)), atol=1e-5)
            assert len(tokens) >= min(decode.min_length, 3 * len(sentence) + 5)
            bigrams = list(zip(tokens, tokens[1:]))
            assert decode.no_repeat_ngram_size != 2 or len(bigrams) == len(set(bigrams))
    if decode.samples == 0 and decode.beam_size > 1:  # n-best lists are sorted, best first
        for hyps in decode_corpus(ensemble, SENTENCES, decode, never=(1,)):
            ranks = [normalised_score(h, decode.length_penalty, decode.length_penalty_type) for h in hyps]
            assert ranks == sorted(ranks, reverse=True)
