"""Steered translation: terminology constraints (dynamic beam allocation), target prefixes and
markup kept -- through the API, the command line, ensembles, int8 and the ONNX backend."""
import random
from collections import Counter

import pytest
import torch

from nmt import markup
from nmt.cli import translate_main
from nmt.ensemble import Ensemble
from nmt.errors import ConfigError
from nmt.io import read_lines
from nmt.translate import Translator

from conftest import LETTERS


@pytest.fixture(scope="module")
def translator(reversal_run):
    return Translator.load(reversal_run)


@pytest.fixture(scope="module")
def sources(reversal_data):
    """Of three words or more: a forced two-word prefix leaves the output something to add."""
    return [s for s in read_lines(reversal_data["test"] + ".src") if len(s.split()) >= 3][:64]


def holds(tokens: list[int], phrase: list[int]) -> bool:
    """``phrase`` appears in ``tokens`` in order and contiguously."""
    return any(tokens[i:i + len(phrase)] == phrase for i in range(len(tokens) - len(phrase) + 1))


def random_constraints(sources: list[str], seed: int) -> list[list[str]]:
    """1 or 2 phrases per sentence: letters the output would not hold (the reversal of the
    source holds its own letters), multi-piece phrases and overlapping pairs among them."""
    rng = random.Random(seed)
    out = []
    for n, source in enumerate(sources):
        absent = [c for c in LETTERS if c not in source.split()] or list(LETTERS)
        a, b, c = rng.sample(absent, 3) if len(absent) >= 3 else (absent * 3)[:3]
        out.append([[a], [f"{a} {b}"], [f"{a} {b}", f"{b} {c}"], [a, f"{b} {c}"]][n % 4])
    return out


def test_every_constraint_is_met_in_its_order_contiguously(translator, sources):
    constraints = random_constraints(sources, 1)
    found = translator.hypotheses(sources, constraints=constraints, beam_size=4)
    unconstrained = translator.hypotheses(sources, beam_size=4)
    for hyps, plain, phrases in zip(found, unconstrained, constraints):
        pieces = [translator.tgt_vocab.encode([p])[0] for p in phrases]
        assert all(holds(hyps[0].tokens, p) for p in pieces), (phrases, hyps[0].tokens)
        assert any(not holds(plain[0].tokens, p) for p in pieces)  # the constraints changed something
        assert hyps[0].ended


def test_overlapping_phrases_can_share_pieces(translator):
    """'l e' and 'e r' are both met by 'l e r': one piece serves both phrases."""
    got = translator.translate(["r e l"], constraints=[["l e", "e r"]], beam_size=3)
    assert got == ["l e r"]


def test_constraints_the_output_meets_anyway_change_nothing(translator, sources):
    plain = translator.hypotheses(sources[:16], beam_size=3)
    own = [[translator.tgt_vocab.decode([h[0].tokens[:2]])[0]] for h in plain]  # its first two words
    steered = translator.hypotheses(sources[:16], constraints=own, beam_size=3)
    for a, b in zip(plain, steered):
        assert a[0].tokens == b[0].tokens and a[0].score == b[0].score


def test_bad_constraints_are_refused_before_anything_is_decoded(translator, monkeypatch):
    monkeypatch.setattr(translator.model, "decode_step", lambda *a: pytest.fail("decoded"))
    src = ["a b c"]
    cases = [
        (dict(constraints=[[""]]), r"constraints\[0\]\[0\]: '' is an empty phrase"),
        (dict(constraints=[["\u200b"]]), "empty phrase"),
        (dict(constraints=[["a\tb"]]), "control character"),
        (dict(constraints=[["a b c d e f"]], max_length=4), "take 6 target pieces, more than its output may hold"),
        (dict(constraints=[["a b c"]], prefix=["d e"], max_length=4), "take 5 target pieces"),
        (dict(constraints=[["a"], ["b"]]), "constraints: 2 entries for 1 sentences"),
        (dict(constraints=[["a"]], beam_size=1), "beam search only"),
        (dict(constraints=[["a"]], samples=2), "beam search only"),
        (dict(prefix=["a"] * 3), "prefix: 3 entries for 1 sentences"),
        (dict(prefix=["<b>"], markup="keep"), "reserves for markup"),
        (dict(constraints=[["e e"]], no_repeat_ngram_size=1), "repeats 1 pieces in a row"),
        (dict(constraints=[["a b a b"]], no_repeat_ngram_size=2), "no_repeat_ngram_size 2 forbids"),
    ]
    for options, message in cases:
        with pytest.raises(ConfigError, match=message):
            translator.translate(src, **options)
    with pytest.raises(TypeError, match=r"constraints\[0\]: expected a list of phrases"):
        translator.translate(src, constraints=["a"])
    with pytest.raises(TypeError, match=r"prefix\[0\]: expected str"):
        translator.translate(src, prefix=[3])
    with pytest.raises(TypeError, match=r"prefix: expected a list with one entry per sentence, got dict"):
        translator.translate(src, prefix={"a": 1})
    with pytest.raises(ConfigError, match=r"constraints\[1\]\[0\]: holds a control character"):
        translator.translate(["a", ""], constraints=[["b"], ["c\x01"]])  # a blank line's phrases too
    with pytest.raises(ConfigError, match="beam search only"):
        translator.sample(src, 2, constraints=[["a"]])


def test_repeated_and_contained_phrases_count_once(translator):
    """20 copies of a phrase, or a phrase inside another, need no more room than one."""
    out = translator.translate(["r e l"], constraints=[["q"] * 20 + ["q p", "p"]], beam_size=3, max_length=6)
    assert "q p" in out[0]


@pytest.mark.parametrize("beam_size", [1, 3])
def test_a_prefix_is_forced_scored_and_continued(translator, sources, beam_size):
    plain = translator.hypotheses(sources, beam_size=beam_size)
    # The output's own first two pieces as prefix: greedy gives the same translation and score.
    # A beam may not: all its beams then share the prefix, so weaker hypotheses fill it, and
    # short ones among them can end the search (k finished) before the best one ends.
    own = [translator.tgt_vocab.decode([h[0].tokens[:2]])[0] for h in plain]
    again = translator.hypotheses(sources, prefix=own, beam_size=beam_size)
    assert all(a[0].tokens[:2] == p[0].tokens[:2] for a, p in zip(again, plain))
    same = [a[0].tokens == p[0].tokens and a[0].score == p[0].score for a, p in zip(again, plain)]
    assert all(same) if beam_size == 1 else sum(same) >= 0.9 * len(same)
    # Another prefix: it starts the output and its pieces are scored.
    forced = translator.hypotheses(sources, prefix=["q q"] * len(sources), beam_size=beam_size)
    q = translator.tgt_vocab.encode(["q q"])[0]
    for hyps, base in zip(forced, plain):
        assert hyps[0].tokens[:len(q)] == q and len(hyps[0].tokens) > len(q)
        assert hyps[0].score < base[0].score


def test_n_best_and_samples_all_start_with_the_prefix(translator, sources):
    for texts in translator.translate_nbest(sources[:8], 3, prefix=["k"] * 8, beam_size=3):
        assert len(texts) == 3 and all(t.startswith("k") for t, _ in texts)
    for texts in translator.sample(sources[:8], 3, prefix=["k j"] * 8, seed=1):
        assert all(t.startswith("k j") for t in texts)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_steered_output_does_not_depend_on_the_batch(translator, sources, beam_size):
    constraints = random_constraints(sources, 2) if beam_size > 1 else None
    prefix = [random.Random(i).choice(LETTERS) if i % 3 else "" for i in range(len(sources))]
    together = translator.hypotheses(sources, constraints=constraints, prefix=prefix, beam_size=beam_size,
                                     n_best=beam_size, batch_size=64)
    for i in range(0, len(sources), 7):
        alone = translator.hypotheses([sources[i]], constraints=constraints and [constraints[i]],
                                      prefix=[prefix[i]], beam_size=beam_size, n_best=beam_size)[0]
        assert [(h.tokens, h.score) for h in alone] == [(h.tokens, h.score) for h in together[i]]


def test_an_ensemble_meets_constraints_and_is_its_model_when_doubled(reversal_run, translator, sources):
    doubled = Translator.load(reversal_run)
    doubled.model = Ensemble([translator.model, translator.model])
    constraints = random_constraints(sources[:24], 3)
    want = translator.hypotheses(sources[:24], constraints=constraints, prefix=["b"] * 24, beam_size=3)
    got = doubled.hypotheses(sources[:24], constraints=constraints, prefix=["b"] * 24, beam_size=3)
    assert [h[0].tokens for h in got] == [h[0].tokens for h in want]


@pytest.mark.parametrize("engine", ["int8", "onnx", "onnx-int8"])
def test_int8_and_onnx_meet_constraints_and_prefixes(reversal_run, tmp_path_factory, sources, engine):
    if engine == "int8":
        steered = Translator.load(reversal_run, int8=True)
    else:
        from nmt.cli import export_main
        folder = tmp_path_factory.mktemp("onnx-steer") / "model"
        assert export_main([str(reversal_run), str(folder), "--onnx"]) == 0
        steered = Translator.load(folder, backend="onnx", int8=engine == "onnx-int8")
    constraints = random_constraints(sources[:24], 4)
    found = steered.hypotheses(sources[:24], constraints=constraints, prefix=["t"] * 24, beam_size=3)
    for hyps, phrases in zip(found, constraints):
        assert hyps[0].tokens[:1] == steered.tgt_vocab.encode(["t"])[0]
        assert all(holds(hyps[0].tokens, steered.tgt_vocab.encode([p])[0]) for p in phrases)
    texts = steered.translate(["<b>a b</b> {1} c"], markup="keep")
    assert Counter(markup.items_of(texts[0])) == Counter(["<b>", "</b>", "{1}"])


def test_the_command_takes_constraint_and_prefix_files(reversal_run, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("a b c\nd e f\n\n", encoding="utf-8")
    (tmp_path / "terms.txt").write_text("q\nr s\tt\n\n", encoding="utf-8")
    (tmp_path / "prefix.txt").write_text("k\n\n\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    assert translate_main([str(reversal_run), "-i", str(tmp_path / "in.txt"), "-o", str(out),
                           "--constraints", str(tmp_path / "terms.txt"), "--prefix", str(tmp_path / "prefix.txt"),
                           "--beam-size", "3"]) == 0
    first, second, blank = read_lines(out)
    assert first.startswith("k") and "q" in first.split()
    assert "r s" in second and "t" in second.split() and blank == ""
    (tmp_path / "short.txt").write_text("q\n", encoding="utf-8")
    (tmp_path / "bad.txt").write_text("q\n\t\n\n", encoding="utf-8")
    for flags, message in ((["--constraints", str(tmp_path / "short.txt")], "short.txt: 1 line, but the input has 3"),
                           (["--constraints", str(tmp_path / "bad.txt")], r"bad.txt:2: phrase 1: '' is an empty"),
                           (["--constraints", str(tmp_path / "terms.txt"), "--beam-size", "1"], "beam search only"),
                           (["--constraints", str(tmp_path / "terms.txt"), "--samples", "2"], "beam search only")):
        capsys.readouterr()
        assert translate_main([str(reversal_run), "-i", str(tmp_path / "in.txt"), "-o", str(tmp_path / "x"),
                               *flags]) == 2
        err = capsys.readouterr().err
        assert message.replace("\\", "") in err.replace("\\", "") and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "x").exists()


# -- markup ------------------------------------------------------------------------------------

LAYOUTS = [
    "<b>a</b> b {1} c",  # a pair and a placeholder
    "<b><i>a b</i> c</b> d",  # nested
    "<b>a</b><i>b</i> c",  # adjacent
    "<u><b><i>a</i></b></u>",  # nested, one word
    "<b></b>", "{1}", '<x id="1"/>', "<b> </b> {name}",  # markup only
    "a < b > c", "<3 a b", "a <b c> d", "{ } a",  # look like markup, are not
    "%s a %1$d b", "a http://x.org/q?a=1. b", "<br> a b", "a</b> b",  # placeholders, unpaired tags
    "  <b> a </b>  ", "a{1}{2}b c", "<b>a <i>b</b> c</i>",  # spacing, crossing tags (input not balanced)
    '<font size=3>a</font> b', '<a href="x>y">a</a> b', "<input disabled> a b", "<!-- c --> a b",  # HTML
    "a<b>b</b>c", "<x/> <y/> a", "a:http://x.org b", "<b>{1}</b> a",
]


def random_layout(rng: random.Random) -> str:
    words = [rng.choice(LETTERS) for _ in range(rng.randint(0, 6))]
    tokens = []

    def nest(depth: int, words: list[str]) -> None:
        for word in words:
            roll = rng.random()
            if roll < 0.2 and depth < 3:
                name = rng.choice("biu")
                tokens.append(f"<{name}>")
                nest(depth + 1, [word] * rng.randint(0, 2))
                tokens.append(f"</{name}>")
            elif roll < 0.3:
                tokens.append(rng.choice(["{1}", "%s", "<x/>", "{name}"]))
            tokens.append(word)
    nest(0, words)
    return (" " if rng.random() < 0.5 else "").join(tokens) if rng.random() < 0.3 else " ".join(tokens)


def test_markup_is_never_lost_duplicated_or_invented(translator):
    layouts = LAYOUTS + [random_layout(random.Random(seed)) for seed in range(150)]
    for beam_size in (1, 3):
        outputs = translator.translate(layouts, markup="keep", beam_size=beam_size)
        for source, out in zip(layouts, outputs):
            assert Counter(markup.items_of(out)) == Counter(markup.items_of(source)), (source, out)
            assert markup.balanced(out) or not markup.balanced(source), (source, out)
            assert "\n" not in out


def test_markup_goes_around_the_words_it_aligned_to(translator):
    assert translator.translate("<b>a</b> b {1} c", markup="keep") == "{1} c b <b>a</b>"
    assert translator.translate("a <b>b c</b> d", markup="keep") == "d <b>c b</b> a"
    # Text without markup translates as it would without the option.
    assert translator.translate("a b c", markup="keep") == translator.translate("a b c")


def test_markup_is_kept_in_n_best_and_samples(translator):
    for text, _ in translator.translate_nbest("<i>a</i> b", 3, markup="keep"):
        assert Counter(markup.items_of(text)) == Counter(["<i>", "</i>"])
    for text in translator.sample("<i>a</i> b", 3, markup="keep", seed=2):
        assert Counter(markup.items_of(text)) == Counter(["<i>", "</i>"])


def test_percent_signs_and_braces_that_are_text():
    assert markup.items_of("100%ige Sicherheit, 50 % und %s") == ["%s"]
    assert markup.items_of("a < b") == ["<"] and markup.items_of("{ }") == ["{", "}"]


def test_markup_strip_builds_the_tree():
    plain, items = markup.strip("x <b>y <i>z</i></b> {1}")
    assert plain == "x y z "
    assert [i.text for i in items] == ["<b>", "{1}"] and items[0].children[0].text == "<i>"
    assert (items[0].start, items[0].end) == (2, 5)
    plain, items = markup.strip("<b>a")  # never closed: a lone item
    assert plain == "a" and items[0].close == "" and not items[0].children


def test_search_never_writes_markup_characters_when_keeping_markup(translator):
    ids = translator.tgt_vocab.markup_ids
    assert ids and all(any(c in translator.tgt_vocab.sp.id_to_piece(i) for c in "<>{}")
                       or translator.tgt_vocab.sp.is_byte(i) for i in ids)
    found = translator.hypotheses(["a < b { c"], markup="keep", beam_size=3, n_best=3)
    assert all(not set(h.tokens) & set(ids) for h in found[0])
    assert torch.is_tensor(found[0][0].attention)
