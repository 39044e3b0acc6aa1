"""Search controls: no repeated n-grams, a minimum length, the GNMT length penalty, and the
Hugging Face ``generate`` names; each keeps a translation independent of its batch."""
import pytest
import torch

from nmt.cli import translate_main
from nmt.config import DecodeConfig
from nmt.errors import ConfigError
from nmt.search import Hypothesis, Rules, normalised_score
from nmt.data import batch_of
from nmt.translate import Translator
from nmt.vocab import END

from conftest import reversal_pairs

SENTENCES = reversal_pairs(60, seed=41)[0] + [""]


@pytest.fixture(scope="module")
def translator(reversal_run):
    return Translator.load(reversal_run)


def repeats(pieces: list[int], n: int) -> bool:
    grams = [tuple(pieces[i:i + n]) for i in range(len(pieces) - n + 1)]
    return len(grams) != len(set(grams))


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("how", [dict(beam_size=1), dict(beam_size=4, n_best=4),
                                 dict(samples=3, temperature=2.0, seed=5)])
def test_no_output_repeats_an_ngram(translator, n, how):
    plain = [h.tokens for hyps in translator.hypotheses(SENTENCES, **how) for h in hyps]
    assert any(repeats(tokens, n) for tokens in plain)  # the rule has something to prevent
    ruled = [h.tokens for hyps in translator.hypotheses(SENTENCES, no_repeat_ngram_size=n, **how)
             for h in hyps]
    assert len(ruled) == len(plain) and not any(repeats(tokens, n) for tokens in ruled)


def test_rules_ban_exactly_the_repeating_pieces_and_the_early_end():
    logp = torch.zeros(2, 6)
    history = torch.tensor([[2, 3, 4, 2, 3], [1, 1, 1, 1, 1]])
    out = Rules(DecodeConfig(no_repeat_ngram_size=3)).apply(logp, 5, history)
    assert torch.isinf(out[0]).nonzero().flatten().tolist() == [4]  # "2 3" was followed by 4
    assert torch.isinf(out[1]).nonzero().flatten().tolist() == [1]
    assert Rules(DecodeConfig(no_repeat_ngram_size=6)).apply(logp, 5, history).isfinite().all()  # no 6-gram yet
    early = Rules(DecodeConfig(min_length=3)).apply(logp, 2, None)
    assert torch.isinf(early).nonzero().tolist() == [[0, END], [1, END]]
    assert Rules(DecodeConfig(min_length=3)).apply(logp, 3, None).isfinite().all()


@pytest.mark.parametrize("how", [dict(beam_size=1), dict(beam_size=3), dict(samples=2, seed=1)])
def test_min_length_holds_and_scores_stay_the_models(translator, how):
    plain = translator.hypotheses(SENTENCES, **how)
    shortest = min(len(h.tokens) for hyps in plain for h in hyps)
    longer = shortest + 3
    ruled = translator.hypotheses(SENTENCES[:-1], min_length=longer, max_length_ratio=100.0, **how)
    assert all(len(h.tokens) >= longer for hyps in ruled for h in hyps)
    # a hypothesis's score is still the model's log-probability of its pieces (end included)
    hyp = ruled[0][0]
    assert hyp.score == pytest.approx(model_logprob(translator, SENTENCES[0], hyp.tokens + [END]), abs=1e-4)


@torch.no_grad()
def model_logprob(translator, sentence: str, pieces: list[int]) -> float:
    batch = batch_of(translator.src_vocab.encode([sentence]))
    memory, state = translator.model.encode(batch.src, batch.src_lengths)
    prev, total = torch.tensor([END]), 0.0
    for piece in pieces:
        logp, state, _ = translator.model.decode_step(prev, state, memory)
        total += logp[0, piece].item()
        prev = torch.tensor([piece])
    return total


def test_controls_keep_a_translation_independent_of_its_batch(translator):
    how = dict(beam_size=4, no_repeat_ngram_size=2, min_length=2, length_penalty_type="gnmt",
               length_penalty=0.6)
    together = translator.translate(SENTENCES, batch_size=64, **how)
    assert translator.translate(SENTENCES, batch_size=5, **how) == together
    assert [translator.translate(s, **how) for s in SENTENCES] == together


def test_gnmt_length_penalty_ranks_by_its_formula(translator):
    short, long = Hypothesis([5], -2.0), Hypothesis([5, 6, 7, 8, 9, 10, 11, 12], -4.5)
    assert normalised_score(short, 1.0, "gnmt") == pytest.approx(-2.0 / (7 / 6))
    assert normalised_score(long, 1.0, "gnmt") == pytest.approx(-4.5 / (14 / 6))
    assert normalised_score(short, 1.0) == -1.0 and normalised_score(long, 1.0) == -0.5
    for alpha in (0.0, 0.6, 2.0):
        for hyps in translator.hypotheses(SENTENCES[:-1], beam_size=4, n_best=4, length_penalty=alpha,
                                          length_penalty_type="gnmt"):
            ranks = [normalised_score(h, alpha, "gnmt") for h in hyps]
            assert ranks == sorted(ranks, reverse=True)
    # the same finished hypotheses, ranked by the two formulas: some sentence's n-best differs
    how = dict(beam_size=4, n_best=4, length_penalty=3.0)
    gnmt = translator.hypotheses(SENTENCES[:-1], length_penalty_type="gnmt", **how)
    plain = translator.hypotheses(SENTENCES[:-1], length_penalty_type="length", **how)
    assert any([h.tokens for h in a] != [h.tokens for h in b] for a, b in zip(gnmt, plain))


def test_generate_speaks_hugging_face(translator):
    text = SENTENCES[:5]
    assert translator.generate(text, num_beams=3) == translator.translate(text, beam_size=3)
    flat = translator.generate(text, num_beams=4, num_return_sequences=2)
    nbest = translator.translate_nbest(text, 2, beam_size=4)
    assert flat == [t for hyps in nbest for t, _ in hyps]
    drawn = translator.generate(text, do_sample=True, num_return_sequences=3, temperature=1.5, seed=9)
    assert drawn == [t for samples in translator.sample(text, 3, temperature=1.5, seed=9) for t in samples]
    assert translator.generate(text[0], no_repeat_ngram_size=1, min_new_tokens=1) == translator.translate(
        text[:1], no_repeat_ngram_size=1, min_length=1)
    assert translator.generate(["", text[0]], num_beams=2, num_return_sequences=2)[:2] == ["", ""]
    with pytest.raises(ConfigError, match="beam sampling"):
        translator.generate(text, do_sample=True, num_beams=4)
    with pytest.raises(ConfigError, match="n_best"):
        translator.generate(text, num_beams=2, num_return_sequences=3)


@pytest.mark.parametrize("key,value", [("no_repeat_ngram_size", -1), ("min_length", 1.5),
                                       ("length_penalty_type", "exp")])
def test_bad_controls_name_the_key(translator, key, value):
    with pytest.raises(ConfigError, match=key):
        translator.translate(SENTENCES[:2], **{key: value})


def test_the_command_takes_the_controls(reversal_run, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(SENTENCES[:10]) + "\n")
    assert translate_main([str(reversal_run), "-i", str(src), "--no-repeat-ngram-size", "1", "--min-length", "2",
                           "--length-penalty-type", "gnmt", "-o", str(tmp_path / "out.txt")]) == 0
    want = Translator.load(reversal_run).translate(SENTENCES[:10], no_repeat_ngram_size=1, min_length=2,
                                                   length_penalty_type="gnmt")
    assert (tmp_path / "out.txt").read_text().splitlines() == want


def test_a_report_decodes_with_every_setting(reversal_run):
    from nmt.evaluate import run_system

    how = dict(no_repeat_ngram_size=1, min_length=2, length_penalty_type="gnmt", length_penalty=0.6)
    system = run_system(reversal_run, SENTENCES[:20], **how)
    translator = Translator.load(reversal_run)
    assert system.hypotheses == translator.translate(SENTENCES[:20], **how)
    assert system.hypotheses != translator.translate(SENTENCES[:20])  # the settings change something here
    assert system.info["decoding"]["no_repeat_ngram_size"] == 1


def test_a_hypothesis_cut_at_the_maximum_length_is_not_normalised_as_if_it_had_ended(translator):
    cut, ended = Hypothesis([5, 6, 7], -3.0, ended=False), Hypothesis([5, 6, 7], -3.0)
    assert normalised_score(cut, 1.0) == -1.0 and normalised_score(ended, 1.0) == -0.75
    assert normalised_score(cut, 1.0, "gnmt") == pytest.approx(-3.0 / (8 / 6))
    # decode.max_length 5 cuts the longer outputs: those are marked so, with one attention row
    # a piece (no row for an end marker that never came).
    found = translator.hypotheses(SENTENCES[:-1], beam_size=3, n_best=3, max_length=5,
                                  keep_attention=True)
    hyps = [h for sentence in found for h in sentence]
    assert any(not h.ended for h in hyps) and any(h.ended for h in hyps)
    assert all(h.ended or len(h.tokens) == 5 for h in hyps)
    assert all(h.attention.shape[0] == len(h.tokens) + h.ended for h in hyps)
