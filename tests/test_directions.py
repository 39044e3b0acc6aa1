"""Several directions in one model (data.directions): one source language, two targets -- its
words reversed (``rev``) or upper-cased in order (``cap``) -- told apart only by the tag <2xx>."""
import json
from pathlib import Path

import pytest
import sacrebleu

from nmt.cli import evaluate_main, translate_main
from nmt.config import config_from_dict, load_config, save_config
from nmt.corpus import Corpus
from nmt.errors import ConfigError
from nmt.io import read_lines
from nmt.serve import Limits
from nmt.train import train
from nmt.translate import Translator

from conftest import Running, post_all, reversal_config, reversal_pairs

DIRECTIONS = ["src-rev", "src-cap"]


def write_three(folder, name, n, seed):
    src, rev = reversal_pairs(n, seed, words=(2, 4))  # short: both directions learnt in 200 steps
    for lang, lines in (("src", src), ("rev", rev), ("cap", [s.upper() for s in src])):
        (folder / f"{name}.{lang}").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    return str(folder / name)


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    folder = tmp_path_factory.mktemp("three")
    return {name: write_three(folder, name, n, seed)
            for name, n, seed in (("train", 3000, 11), ("valid", 60, 12), ("test", 60, 13))}


def two_way(data, **overrides):
    cfg = reversal_config(data, data__directions=DIRECTIONS, data__vocab_size=400, train__max_steps=200,
                          train__valid_every=100, train__batch_size=700,
                          model__input_feeding=False, **overrides)
    return config_from_dict(cfg)


@pytest.fixture(scope="module")
def two_way_run(three, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "two-way"
    train(two_way(three), run)
    return run


def expected(data, lang):
    return read_lines(f"{data['test']}.{lang}")


def bleu(out, ref):
    return sacrebleu.corpus_bleu(out, [ref]).score


def first_word_agreement(out, ref):
    """The share of lines whose first word is the reference's first word."""
    return sum(o.split()[:1] == r.split()[:1] for o, r in zip(out, ref)) / len(ref)


def test_a_two_direction_model_validates_each_and_decodes_the_language_of_its_tag(two_way_run, three):
    rows = [json.loads(line) for line in (two_way_run / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in rows if "valid_bleu" in r]
    assert len(valid) == 2
    for row in valid:  # per direction, and their mean (which chose best.pt)
        assert row["valid_bleu"] == pytest.approx((row["valid_bleu_src-rev"] + row["valid_bleu_src-cap"]) / 2)
    log = (two_way_run / "train.log").read_text(encoding="utf-8")
    assert "BLEU src-rev " in log and ", src-cap " in log and ", mean " in log
    translator = Translator.load(two_way_run)
    src = expected(three, "src")
    rev, cap = (translator.translate(src, target_lang=lang) for lang in ("rev", "cap"))
    assert all(line.isupper() for line in cap)  # the tag alone decides the casing ...
    assert not any(c.isupper() for line in rev for c in line)
    # ... and the word order. Which word a line starts with
    # tells the order apart far more sharply than BLEU, whose unigrams both orders share.
    reversed_order, same_order = expected(three, "rev"), src
    cap = [c.lower() for c in cap]
    for out, meant, other in ((rev, reversed_order, same_order), (cap, same_order, reversed_order)):
        assert bleu(out, meant) > max(70, bleu(out, other))
        assert first_word_agreement(out, meant) > max(0.3, 3 * first_word_agreement(out, other))


def test_a_request_without_a_direction_is_refused_in_one_line(two_way_run):
    translator = Translator.load(two_way_run)
    with pytest.raises(ConfigError, match=r"^target_lang: this model translates into rev, cap: choose one$"):
        translator.translate(["a b c"])
    with pytest.raises(ConfigError, match=r"^target_lang: 'de': this model translates into rev, cap$"):
        translator.translate(["a b c"], target_lang="de")
    one_way = Translator.load(two_way_run)
    one_way.run.cfg.data.directions = []  # the same weights read as a one-direction run: no tag wanted
    assert one_way.source_tags(one_way.settings()) == []


def test_the_command_line_and_the_server_choose_the_direction(two_way_run, three, tmp_path, capsys):
    src = f"{three['test']}.src"
    translator = Translator.load(two_way_run)
    for lang in ("rev", "cap"):
        out = tmp_path / f"out.{lang}"
        assert translate_main([str(two_way_run), "-i", src, "-o", str(out), "--target-lang", lang]) == 0
        assert read_lines(out) == translator.translate(read_lines(src), target_lang=lang)
    assert translate_main([str(two_way_run), "-i", src, "-o", str(tmp_path / "none")]) == 2
    assert "error: target_lang: this model translates into rev, cap: choose one" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    assert evaluate_main([str(two_way_run), "--target-lang", "cap", "--out", str(tmp_path / "report"),
                          "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    cap = translator.translate(read_lines(src), target_lang="cap", beam_size=3)
    assert report["systems"][0]["scores"]["bleu"] == pytest.approx(bleu(cap, expected(three, "cap")), abs=0.01)
    translator = Translator.load(two_way_run)
    running = Running(translator, Limits(batch_wait_ms=1))
    try:
        sentences = read_lines(src)[:20]
        (s1, rev), (s2, cap), (s3, bad) = post_all(running.url, [
            {"sentences": sentences, "target_lang": "rev"}, {"sentences": sentences, "target_lang": "cap"},
            {"sentences": sentences}])
    finally:
        running.stop()
    assert (s1, s2, s3) == (200, 200, 400)
    assert rev["translations"] == translator.translate(sentences, target_lang="rev")
    assert cap["translations"] == translator.translate(sentences, target_lang="cap")
    assert bad["error"] == "target_lang: this model translates into rev, cap: choose one"


def test_tags_are_control_symbols_no_text_can_write(two_way_run):
    translator = Translator.load(two_way_run)
    vocab = translator.src_vocab
    tags = vocab.tag_ids(["<2rev>", "<2cap>"])
    assert not set(tags) & set(x for ids in vocab.encode(["<2rev> a b", "<2cap>"]) for x in ids)
    assert set(tags) <= set(translator.tgt_vocab.control_ids)  # never written by search
    assert translator.source_tags(translator.settings(target_lang="cap")) == [tags[1]]


def test_an_entry_tag_marks_its_training_sources_only(three, tmp_path):
    """Back-translation's tag (Caswell et al. 2019): <BT> before the tagged entry's sources in the
    prepared corpus, never in validation or decoding."""
    folder = tmp_path / "bt"
    folder.mkdir()
    synthetic = write_three(folder, "synthetic", 200, 14)
    cfg = config_from_dict(reversal_config(three, data__directions=[
        "src-rev", {"src": "src", "tgt": "rev", "train": synthetic, "tag": "<BT>"}]))
    corpus = Corpus(cfg, tmp_path / "run", reuse_vocab=False)
    bt = corpus.src_vocab.tag_ids(["<BT>"])[0]
    first = corpus.src.flat[corpus.src.offsets]  # each training source's first piece
    assert (first == bt).sum() == 200 and (first[:3000] != bt).all()  # one target: no <2rev>
    assert [v.name for v in corpus.valid_sets] == ["src-rev"]
    assert not any(bt in ids for ids in corpus.valid_sets[0].src)


def test_directions_are_read_checked_and_kept(three, tmp_path):
    cfg = two_way(three)
    assert [(d.src, d.tgt, d.train) for d in cfg.data.directions] == [("src", "rev", ""), ("src", "cap", "")]
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").data.directions == cfg.data.directions
    bad = [(["de_en"], r"data\.directions\[0\]: expected SRC-TGT or a mapping, got 'de_en'"),
           ([{"src": "de", "tgt": "en", "tags": "<BT>"}], r"unknown key 'data\.directions\[0\]\.tags'"),
           ([{"src": "de", "tgt": "en", "tag": "BT"}], r"data\.directions\[0\]\.tag: 'BT': expected one piece"),
           ([{"src": "de", "tgt": "en", "tag": "<2en>"}], r"<2\.\.\.> is a target-language tag"),
           (["de-", "en-de"], r"data\.directions\[0\]\.tgt: '' is not a language code"),
           (["de-en", "de-en"], r"data\.directions\[1\]: the same direction, data and tag"),
           ({"de": "en"}, r"data\.directions: expected a list of directions")]
    for value, message in bad:
        with pytest.raises(ConfigError, match=message):
            config_from_dict(reversal_config(three, data__directions=value))


def test_a_tag_missing_from_the_vocabulary_is_named(two_way_run, three, tmp_path):
    """Fine-tuning into a direction the source's vocabulary has no tag for fails before training."""
    folder = tmp_path / "up"
    folder.mkdir()
    up = {name: write_three(folder, name, 20, seed) for name, seed in (("train", 1), ("valid", 2), ("test", 3))}
    for name in up.values():
        Path(f"{name}.cap").rename(f"{name}.up")
    entry = {"src": "src", "tgt": "up", **up}
    cfg = reversal_config(three, data__directions=["src-rev", entry], train__init_from=str(two_way_run),
                          model__input_feeding=False)
    with pytest.raises(ConfigError, match=r"spm\.model: has no tag <2up> \(data\.directions\)"):
        train(config_from_dict(cfg), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
