import math

import pytest
import torch

from nmt.checkpoint import load_run
from nmt.config import DecodeConfig
from nmt.data import source_tensor
from nmt.io import read_lines
from nmt.search import beam_search, greedy_search, max_output_lengths
from nmt.translate import Translator, decode_corpus
from nmt.vocab import END


@pytest.fixture(scope="module")
def loaded(reversal_run, reversal_data):
    run = load_run(reversal_run)
    sentences = read_lines(reversal_data["test"] + ".src")[:100]
    return run, run.src_vocab.encode(sentences)


def test_decoder_starts_from_the_end_marker_and_stops_on_it(loaded):
    run, ids = loaded
    seen = []
    original = run.model.decode_step

    def spy(prev, state, memory):
        seen.append(prev.clone())
        return original(prev, state, memory)

    run.model.decode_step = spy
    try:
        src, lengths = source_tensor(ids[:8])
        assert (src[torch.arange(8), lengths - 1] == END).all()  # the encoder reads "... _"
        hyps = greedy_search(run.model, src, lengths)
    finally:
        del run.model.decode_step
    assert (seen[0] == END).all()
    assert all(END not in h.tokens for h in hyps)
    # each later input is the previous output; finished sentences leave the batch
    assert [len(s) for s in seen] == sorted((len(s) for s in seen), reverse=True)
    assert len(seen[-1]) < 8
    for t in range(1, len(seen)):
        rows = [i for i, h in enumerate(hyps) if len(h.tokens) >= t]
        assert seen[t].tolist() == [hyps[i].tokens[t - 1] for i in rows]


def test_beam_size_one_is_exactly_greedy(loaded):
    run, ids = loaded
    src, lengths = source_tensor(ids)
    greedy = greedy_search(run.model, src, lengths)
    beam = beam_search(run.model, src, lengths, beam_size=1)
    assert [h.tokens for h in greedy] == [b[0].tokens for b in beam]
    assert [h.score for h in greedy] == pytest.approx([b[0].score for b in beam], abs=1e-4)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_translation_does_not_depend_on_the_batch(loaded, beam_size):
    run, ids = loaded
    results = []
    for batch_size in (1, 7, 64):
        decode = DecodeConfig(beam_size=beam_size, batch_size=batch_size)
        results.append([h[0].tokens for h in decode_corpus(run.model, ids, decode)])
    assert results[0] == results[1] == results[2]


def test_n_best_is_ordered_and_distinct(loaded):
    run, ids = loaded
    src, lengths = source_tensor(ids[:10])
    for hyps in beam_search(run.model, src, lengths, beam_size=5, n_best=5, length_penalty=1.0):
        assert len(hyps) == 5
        norm = [h.score / (len(h.tokens) + 1) for h in hyps]
        assert norm == sorted(norm, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == 5


def test_maximum_length_is_a_ratio_of_the_source(loaded):
    run, ids = loaded
    src, lengths = source_tensor(ids[:10])
    limits = max_output_lengths(lengths, 0.5)
    assert limits == [math.ceil(0.5 * (n - 1)) + 5 for n in lengths.tolist()]
    for hyps in (greedy_search(run.model, src, lengths, 0.5),
                 [b[0] for b in beam_search(run.model, src, lengths, 3, max_length_ratio=0.5)]):
        assert all(len(h.tokens) <= m for h, m in zip(hyps, limits))


def test_attention_weights_are_kept_per_output_step(loaded):
    run, ids = loaded
    src, lengths = source_tensor(ids[:4])
    for hyp, n in zip(greedy_search(run.model, src, lengths, keep_attention=True), lengths.tolist()):
        assert hyp.attention.shape[0] == len(hyp.tokens) + 1
        assert torch.allclose(hyp.attention.sum(-1), torch.ones(hyp.attention.shape[0]), atol=1e-5)
        assert (hyp.attention[:, n:] == 0).all()


def test_translator_keeps_line_count_and_order(reversal_run):
    translator = Translator.load(reversal_run)
    out = translator.translate(["a b c", "", "   ", "d e f g"], beam_size=3)
    assert out == ["c b a", "", "", "g f e d"]
    nbest = translator.translate_nbest(["a b c"], n_best=3)
    assert len(nbest[0]) == 3 and nbest[0][0][0] == "c b a"
