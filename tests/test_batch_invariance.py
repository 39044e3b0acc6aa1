"""A sentence's pieces and scores are the same, bit for bit, in any batch (nmt.invariant).

Scores are compared bit for bit: any arithmetic that depends on the batch shows in
them, near-tie or not, before it flips a piece. 1,000 sentences (int8: 400) are decoded in
one batch (two hypotheses each with a beam); 64, seven and one at a time, the 200 chosen by
``chosen``: the 150 nearest ties between the two best hypotheses and 50 spread over the
rest. Against the code before nmt.invariant (commit 6b9922d), 241 to 1,116 of 2,000
scores differed from batch 1000's, per mode and batch size (benchmarks/batch_invariance.py
decodes those 2,000).
"""
import copy

import pytest
import torch

from conftest import reversal_pairs
from nmt import invariant
from nmt.loading import load_run
from nmt.config import DecodeConfig
from nmt.quantize import quantize_int8
from nmt.serve import Limits
from nmt.translate import Translator, decode_corpus

from conftest import Running, post_all

MODES = {"greedy": {"beam_size": 1}, "beam 5": {"beam_size": 5, "n_best": 2},
         "beam 5, no repeated 2-grams": {"beam_size": 5, "no_repeat_ngram_size": 2, "n_best": 2},
         "int8 beam 5": {"beam_size": 5, "n_best": 2}}
NEAR_TIES, SPREAD = 150, 50  # the sentences decoded again one and seven at a time
# int8 products without VNNI are slow: its mode decodes the first 400 of the 1,000
SENTENCES = {"int8 beam 5": 400}


@pytest.fixture(scope="module")
def sentences():
    src, _ = reversal_pairs(1000, seed=21)
    return src


def found(model, ids, batch_size, options):
    decode = DecodeConfig(batch_size=batch_size, max_length_ratio=1.5, **options)
    return [[(h.tokens, h.score, h.ended) for h in hyps] for hyps in decode_corpus(model, ids, decode)]


def chosen(model, ids, options, reference) -> list[int]:
    """The NEAR_TIES sentences whose two best hypotheses lie closest in score (where a sum
    formed in another order flips a piece first) and SPREAD more evenly over the rest;
    ``reference`` already holds two hypotheses per sentence where a beam was searched."""
    two = reference if options.get("n_best", 1) >= 2 else found(
        model, ids, 1000, dict(options, beam_size=max(2, options["beam_size"]), n_best=2))
    gaps = sorted(range(len(ids)), key=lambda i: two[i][0][1] - two[i][1][1]
                  if len(two[i]) > 1 else float("inf"))
    rest = gaps[NEAR_TIES:]
    return sorted(gaps[:NEAR_TIES] + rest[::len(rest) // SPREAD][:SPREAD])


@pytest.mark.parametrize("mode", MODES)
def test_pieces_and_scores_do_not_depend_on_the_batch(reversal_run, sentences, mode):
    run = load_run(reversal_run)
    model = quantize_int8(copy.deepcopy(run.model)) if mode.startswith("int8") else run.model
    options = MODES[mode]
    ids = run.src_vocab.encode(sentences[:SENTENCES.get(mode, len(sentences))])
    reference = found(model, ids, 1000, options)
    picks = chosen(model, ids, options, reference)
    assert len(picks) == NEAR_TIES + SPREAD
    for batch_size in (64, 7, 1):
        got = found(model, [ids[i] for i in picks], batch_size, options)
        differ = sum(a != reference[i] for a, i in zip(got, picks))
        assert differ == 0, f"{mode}, batch {batch_size}: {differ} of {len(picks)} chosen sentences differ"


def test_a_sentence_is_the_same_at_any_position_of_a_batch(reversal_run, sentences):
    """decode_corpus sorts by length; here the same sentence sits among others, unsorted."""
    translator = Translator.load(reversal_run)
    pick = sentences[:40]
    alone = [translator.hypotheses([s], beam_size=5)[0][0] for s in pick]
    for shift in (0, 13, 27):
        batch = pick[shift:] + pick[:shift] + sentences[100:140]
        mixed = translator.hypotheses(batch, beam_size=5, batch_size=len(batch))
        for i, sentence in enumerate(pick):
            hyp = mixed[(i - shift) % len(pick)][0]
            assert (hyp.tokens, hyp.score) == (alone[i].tokens, alone[i].score), sentence


def test_through_the_server_one_request_equals_single_requests(reversal_run, sentences):
    translator = Translator.load(reversal_run)
    running = Running(translator, Limits(max_sentences=100, batch_wait_ms=1))
    try:
        pick = sentences[:100]
        options = {"beam_size": 5, "no_repeat_ngram_size": 2, "n_best": 2}  # n_best > 1: with scores
        whole = post_all(running.url, [{"sentences": pick, **options}])[0]
        # one at a time, so that each is decoded alone
        singles = [post_all(running.url, [{"sentences": [s], **options}])[0] for s in pick]
    finally:
        running.stop()
    assert whole[0] == 200
    assert all(status == 200 for status, _ in singles)
    assert whole[1]["translations"] == [answer["translations"][0] for _, answer in singles]
    assert whole[1]["n_best"] == [answer["n_best"][0] for _, answer in singles]


@pytest.mark.parametrize("kernel", ["fixed order", "MKL padded"])
def test_the_exact_product_is_the_linear_map_and_each_row_its_own(kernel, monkeypatch):
    """invariant.linear equals F.linear to rounding, and a row's bits do not depend on the
    other rows or the threads: 1 to 40 rows and 200, narrow (fewer than MIN_OUTPUTS) and wide
    (over K_BLOCK), by the compiled kernel and by MKL's padded products."""
    if kernel == "MKL padded":
        monkeypatch.setattr(invariant, "kernel", lambda: None)
    elif torch.backends.cpu.get_cpu_capability() in invariant.KERNEL_CPUS:
        assert invariant.kernel() is not None  # this CPU and a C compiler: the fast path runs
    g = torch.Generator().manual_seed(3)
    for out_features, width in ((3, 8), (64, 32), (96, 1100), (13, 37)):
        weight, bias = torch.randn(out_features, width, generator=g), torch.randn(out_features, generator=g)
        x = torch.randn(200, width, generator=g)
        whole = invariant.linear(x, weight, bias)
        assert torch.allclose(whole, torch.nn.functional.linear(x, weight, bias), atol=1e-4)
        for n in range(1, 41):
            assert torch.equal(invariant.linear(x[-n:], weight, bias), whole[-n:]), (out_features, width, n)
        assert torch.equal(invariant.linear(x[:5].view(5, 1, width), weight, None),
                           invariant.linear(x[:5], weight, None).view(5, 1, -1))
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            assert torch.equal(invariant.linear(x, weight, bias), whole)
        finally:
            torch.set_num_threads(threads)


def fixed_order_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """nmt/fixed_order.c's documented order in float32 steps, each fused multiply-add formed
    in float64 (exact product) and rounded once: 8 lanes, the lane tree, the tail, the bias."""
    f32 = torch.float32
    def fma(a, b, c):  # round(a * b + c): the float64 sum of an exact product, rounded to float32
        return (a.double() * b.double() + c.double()).to(f32)
    width = x.size(1)
    in8 = width - width % 8
    lanes = torch.zeros(x.size(0), weight.size(0), 8, dtype=f32)
    for k in range(0, in8, 8):
        lanes = fma(x[:, None, k:k + 8], weight[None, :, k:k + 8], lanes)
    a = lanes.unbind(-1)
    total = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
    for k in range(in8, width):
        total = fma(x[:, None, k], weight[None, :, k], total)
    return total + bias


def test_the_fixed_order_kernel_sums_in_its_documented_order():
    """Every element of the compiled kernel's product equals the order fixed_order.c states,
    formed independently: the order is a property of the width, not of this CPU's BLAS."""
    if torch.backends.cpu.get_cpu_capability() not in invariant.KERNEL_CPUS:
        assert invariant.kernel() is None
        return
    g = torch.Generator().manual_seed(5)
    for out_features, width in ((13, 37), (70, 64), (9, 7), (130, 260)):
        weight, bias = torch.randn(out_features, width, generator=g), torch.randn(out_features, generator=g)
        x = torch.randn(11, width, generator=g)
        assert torch.equal(invariant.linear(x, weight, bias), fixed_order_reference(x, weight, bias))


def test_without_a_compiler_the_products_fall_back_with_a_warning(tmp_path, monkeypatch):
    """A kernel that cannot be built (no such compiler) warns, leaves no partial file in the
    cache, and decoding's products are MKL's padded ones; NMT_FIXED_ORDER=0 chooses them."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    invariant.kernel.cache_clear()
    try:
        x, weight = torch.randn(3, 20), torch.randn(30, 20)
        if torch.backends.cpu.get_cpu_capability() in invariant.KERNEL_CPUS:
            with pytest.warns(UserWarning, match="fixed-order kernel could not be built"):
                assert invariant.kernel() is None
            assert [p.name for p in (tmp_path / "nmt").iterdir()] == []
        assert torch.equal(invariant.linear(x, weight, None), invariant.padded_linear(x, weight, None))
        invariant.kernel.cache_clear()
        monkeypatch.delenv("CC")
        monkeypatch.setenv("NMT_FIXED_ORDER", "0")
        assert invariant.kernel() is None
    finally:
        invariant.kernel.cache_clear()
