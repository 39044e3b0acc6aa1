import math

import pytest
import torch

from conftest import HostTransfers
from nmt.loading import load_run
from nmt.config import DecodeConfig, config_from_dict
from nmt.data import Batch, batch_of
from nmt.io import read_lines
from nmt.model import Seq2Seq
from nmt.search import Hypothesis, beam_search, greedy_search, max_output_lengths
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
        batch = batch_of(ids[:8])
        src = batch.src
        lengths = batch.src_lengths
        assert (src[torch.arange(8), lengths - 1] == END).all()  # the encoder reads "... _"
        hyps = greedy_search(run.model, batch)
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
    batch = batch_of(ids)
    greedy = greedy_search(run.model, batch)
    beam = beam_search(run.model, batch, DecodeConfig(beam_size=1))
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
    batch = batch_of(ids[:10])
    for hyps in beam_search(run.model, batch, DecodeConfig(beam_size=5, n_best=5, length_penalty=1.0)):
        assert len(hyps) == 5
        norm = [h.score / (len(h.tokens) + 1) for h in hyps]
        assert norm == sorted(norm, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == 5


def test_maximum_length_is_a_ratio_of_the_source(loaded):
    run, ids = loaded
    batch = batch_of(ids[:10])
    lengths = batch.src_lengths
    limits = max_output_lengths(lengths, 0.5)
    assert limits == [math.ceil(0.5 * (n - 1)) + 5 for n in lengths.tolist()]
    for hyps in (greedy_search(run.model, batch, DecodeConfig(max_length_ratio=0.5)),
                 [b[0] for b in beam_search(run.model, batch, DecodeConfig(beam_size=3, max_length_ratio=0.5))]):
        assert all(len(h.tokens) <= m for h, m in zip(hyps, limits))


def test_attention_weights_are_kept_per_output_step(loaded):
    run, ids = loaded
    batch = batch_of(ids[:4])
    for hyp, n in zip(greedy_search(run.model, batch, keep_attention=True), batch.src_lengths.tolist()):
        assert hyp.attention.shape[0] == len(hyp.tokens) + 1
        assert torch.allclose(hyp.attention.sum(-1), torch.ones(hyp.attention.shape[0]), atol=1e-5)
        assert (hyp.attention[:, n:] == 0).all()


def test_translator_keeps_line_count_and_order(reversal_run):
    translator = Translator.load(reversal_run)
    out = translator.translate(["a b c", "", "   ", "d e f g"], beam_size=3)
    assert out == ["c b a", "", "", "g f e d"]
    nbest = translator.translate_nbest(["a b c"], n_best=3)
    assert len(nbest[0]) == 3 and nbest[0][0][0] == "c b a"


# --- The search as it was before it moved its bookkeeping onto the device: a plain,
# per-sentence Python oracle that the device-resident search must match exactly.

@torch.no_grad()
def reference_greedy_search(model, src, lengths, max_length_ratio=2.0, keep_attention=False):
    memory, state = model.encode(src, lengths)
    batch = src.size(0)
    max_lens = max_output_lengths(lengths, max_length_ratio)
    hyps = [Hypothesis([], 0.0) for _ in range(batch)]
    attention = [[] for _ in range(batch)]
    alive = list(range(batch))
    prev = src.new_full((batch,), END)
    for _ in range(max(max_lens)):
        logp, state, weights = model.decode_step(prev, state, memory)
        best, prev = logp.max(dim=-1)
        keep = []
        for row, (i, token, score) in enumerate(zip(alive, prev.tolist(), best.tolist())):
            hyps[i].score += score
            if keep_attention:
                attention[i].append(weights[row])
            if token != END:
                hyps[i].tokens.append(token)
                if len(hyps[i].tokens) < max_lens[i]:
                    keep.append(row)
        if len(keep) < len(alive):
            if not keep:
                break
            index = torch.tensor(keep, device=src.device)
            state, memory, prev = state.select(index), memory.select(index), prev[index]
            alive = [alive[row] for row in keep]
    if keep_attention:
        for i, hyp in enumerate(hyps):
            hyp.attention = torch.stack(attention[i]).cpu()
    return hyps


@torch.no_grad()
def reference_beam_search(model, src, lengths, beam_size, length_penalty=1.0, max_length_ratio=2.0,
                          n_best=1, keep_attention=False):
    k = beam_size
    memory, state = model.encode(src, lengths)
    batch, device = src.size(0), src.device
    max_lens = max_output_lengths(lengths, max_length_ratio)
    width = 1
    alive = list(range(batch))
    scores = torch.zeros((batch, width), device=device)
    history = src.new_zeros((batch, 0))
    att_history = src.new_zeros((batch, 0, src.size(1)), dtype=torch.float) if keep_attention else None
    finished = [[] for _ in range(batch)]
    prev = src.new_full((batch,), END)

    def normalised(hyp):
        return hyp.score / (len(hyp.tokens) + hyp.ended) ** length_penalty

    for t in range(max(max_lens)):
        logp, state, weights = model.decode_step(prev, state, memory)
        vocab = logp.size(1)
        candidates = (scores.view(-1, 1) + logp).view(len(alive), width * vocab)
        top_scores, top_ids = candidates.topk(2 * k, dim=1)
        origins = top_ids // vocab
        tokens = top_ids % vocab
        next_rows, next_tokens, next_scores, still = [], [], [], []
        for a, i in enumerate(alive):
            last = t + 1 >= max_lens[i]
            chosen = 0
            for j, (score, origin, token) in enumerate(zip(top_scores[a].tolist(), origins[a].tolist(),
                                                           tokens[a].tolist())):
                row = a * width + origin
                if token == END or last:
                    if j < k:
                        seq = history[row].tolist() + ([] if token == END else [token])
                        hyp = Hypothesis(seq, score, ended=token == END)
                        if keep_attention:
                            hyp.attention = torch.cat([att_history[row], weights[row, None]]).cpu()
                        finished[i].append(hyp)
                    continue
                if chosen < k:
                    next_rows.append(row)
                    next_tokens.append(token)
                    next_scores.append(score)
                    chosen += 1
            if len(finished[i]) < k and not last:
                still.append(a)
            else:
                del next_rows[len(next_rows) - chosen:], next_tokens[len(next_tokens) - chosen:], \
                    next_scores[len(next_scores) - chosen:]
        if not still:
            break
        index = torch.tensor(next_rows, device=device)
        state = state.select(index)
        history = torch.cat([history.index_select(0, index),
                             torch.tensor(next_tokens, device=device)[:, None]], dim=1)
        if keep_attention:
            att_history = torch.cat([att_history.index_select(0, index),
                                     weights.index_select(0, index)[:, None]], dim=1)
        if len(still) < len(alive):
            memory = memory.select(torch.tensor(still, device=device))
            alive = [alive[a] for a in still]
        width = k
        scores = torch.tensor(next_scores, device=device).view(len(alive), k)
        prev = index.new_tensor(next_tokens)
    return [sorted(hyps, key=normalised, reverse=True)[:n_best] for hyps in finished]


def assert_same(got: list[Hypothesis], want: list[Hypothesis]):
    """Identical token lists, bit-identical scores, identical attention, in the same order."""
    assert [h.tokens for h in got] == [h.tokens for h in want]
    assert [h.score for h in got] == [h.score for h in want]
    for g, w in zip(got, want):
        assert (g.attention is None) == (w.attention is None)
        if w.attention is not None:
            assert g.attention.device.type == "cpu" and torch.equal(g.attention, w.attention)


def random_model(vocab: int, cell: str = "lstm", tie: str = "") -> Seq2Seq:
    """A randomly initialised model: near-uniform outputs, so ends come early and often.
    tie="uniform": exactly uniform outputs (every candidate ties); tie="end": the end marker
    and two other pieces tie exactly at the top."""
    torch.manual_seed(3)
    cfg = config_from_dict({"model": {"cell": cell, "embedding_size": 16, "encoder_hidden_size": 16,
                                      "decoder_hidden_size": 32, "decoder_layers": 2,
                                      "tie_output": False, "share_embeddings": False}})
    model = Seq2Seq(cfg.model, vocab, vocab).eval()
    if tie:
        with torch.no_grad():
            model.output.weight.zero_()
            model.output.bias.zero_()
            if tie == "end":
                model.output.bias[[END, 5, 7]] = 1.0
    return model


def mixed_batch(vocab: int, n: int, seed: int) -> Batch:
    rng = torch.Generator().manual_seed(seed)
    sizes = torch.randint(0, 9, (n,), generator=rng).tolist()
    return batch_of([torch.randint(3, vocab, (s,), generator=rng).tolist() for s in sizes])


def search_cases(loaded):
    run, ids = loaded
    yield "reversal", run.model, batch_of(ids[:40])
    for vocab, cell, tie in ((12, "lstm", ""), (11, "gru", ""), (12, "lstm", "uniform"),
                             (10, "lstm", "end")):
        yield (f"random-{cell}-{vocab}-{tie}", random_model(vocab, cell, tie),
               mixed_batch(vocab, 24, vocab))


@pytest.mark.parametrize("beam_size", [1, 2, 3, 5])
def test_beam_search_matches_the_reference_exactly(loaded, beam_size):
    for name, model, batch in search_cases(loaded):
        src = batch.src
        lengths = batch.src_lengths
        for penalty in (0.0, 1.0, 2.0):
            for ratio in (0.0, 0.5, 2.0):
                keep = penalty == 1.0
                # n-best lists: shorter than the beam, the beam, and all finished hypotheses
                n_best = {0.0: max(1, beam_size - 1), 1.0: beam_size, 2.0: 2 * beam_size}[penalty]
                decode = DecodeConfig(beam_size=beam_size, length_penalty=penalty, max_length_ratio=ratio,
                                      n_best=n_best)
                got = beam_search(model, batch, decode, keep_attention=keep)
                want = reference_beam_search(model, src, lengths, beam_size, penalty, ratio, n_best, keep)
                assert len(got) == len(want) == src.size(0), name
                for g, w in zip(got, want):
                    assert len(g) == len(w) <= n_best
                    assert_same(g, w)


def test_greedy_search_matches_the_reference_exactly(loaded):
    for name, model, batch in search_cases(loaded):
        for ratio in (0.0, 0.5, 2.0):
            for keep in (False, True):
                assert_same(greedy_search(model, batch, DecodeConfig(max_length_ratio=ratio), keep_attention=keep),
                            reference_greedy_search(model, batch.src, batch.src_lengths, ratio, keep))


def test_the_cases_end_both_ways(loaded):
    """The cases above exercise both ways of finishing (an end marker, the maximum length),
    and sentences that end more than beam_size hypotheses in their last step."""
    at_limit, counts = [], []
    for _, model, batch in search_cases(loaded):
        limits = max_output_lengths(batch.src_lengths, 0.0)
        hyps = reference_beam_search(model, batch.src, batch.src_lengths, 3, max_length_ratio=0.0, n_best=6)
        at_limit += [len(h.tokens) == m for hs, m in zip(hyps, limits) for h in hs]
        counts += [len(hs) for hs in hyps]
    assert any(at_limit) and not all(at_limit)
    assert max(counts) > 3

@pytest.mark.parametrize("beam_size", [1, 5])
def test_search_makes_at_most_one_host_transfer_per_step(loaded, monkeypatch, beam_size):
    """From the first decoder step on (so leaving out encoding): one transfer per step, and a
    few to read the results at the end -- not one per sentence per step."""
    run, ids = loaded
    batch = batch_of(ids[:50])
    counter, before = None, []
    original = run.model.decode_step

    def counted(*args):
        before.append(counter.count)
        return original(*args)

    def transfers(search, *args, **options):
        nonlocal counter
        run.model.decode_step = counted
        before.clear()
        try:
            with monkeypatch.context() as patch, HostTransfers(patch) as counter:
                search(run.model, *args, **options)
        finally:
            del run.model.decode_step
        return counter.count - before[0], len(before)

    beam = DecodeConfig(beam_size=beam_size, length_penalty=1.0, max_length_ratio=2.0, n_best=2)
    for new, old, args in ((greedy_search, reference_greedy_search, (2.0, True)),
                           (beam_search, reference_beam_search, (beam_size, 1.0, 2.0, 2, True))):
        count, steps = transfers(new, batch, beam if new is beam_search else DecodeConfig(max_length_ratio=2.0),
                                 keep_attention=True)
        assert steps > 5 and count <= steps + 5, new.__name__
        count, steps = transfers(old, batch.src, batch.src_lengths, *args)
        assert count > 2 * steps + 5  # the bound has teeth: the old search copied per sentence
