"""Subword regularization (data.subword_sampling): each pair's sampled segmentations are prepared
once into the memory-mapped cache; each epoch takes one per pair, from the seed and the epoch."""
import json

import numpy as np
import pytest

from nmt.config import config_from_dict
from nmt.corpus import Corpus
from nmt.train import train

from conftest import reversal_config, reversal_pairs, same_last_checkpoints, write_split

SAMPLED = {"data__subword_sampling": 0.2, "data__subword_segmentations": 3, "data__vocab_size": 400}


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    """Word-like sentences (letters joined), so that BPE has merges to drop."""
    folder = tmp_path_factory.mktemp("words")
    splits = {}
    for name, n, seed in (("train", 400, 31), ("valid", 30, 32), ("test", 30, 33)):
        src, tgt = reversal_pairs(n, seed)
        join = lambda lines: [" ".join(w + w[::-1] + "ab" for w in s.split()) for s in lines]  # noqa: E731
        splits[name] = write_split(folder, name, join(src), join(tgt))
    return splits


def sentences(corpus, rows, side="src"):
    pieces = getattr(corpus, side)
    return [pieces.flat[pieces.offsets[r]:pieces.offsets[r] + pieces.lengths[r]].tolist() for r in rows]


def test_each_pair_is_prepared_in_several_sampled_segmentations_of_its_text(words, tmp_path):
    corpus = Corpus(config_from_dict(reversal_config(words, **SAMPLED)), tmp_path / "run", reuse_vocab=False)
    k = corpus.segmentations
    assert k == 3 and len(corpus.src.lengths) == 3 * 400
    text = open(words["train"] + ".src", encoding="utf-8").read().splitlines()
    exact = corpus.src_vocab.encode(text)
    differ = 0
    for pair in range(400):
        copies = sentences(corpus, range(pair * k, pair * k + k))
        assert corpus.src_vocab.decode(copies) == [text[pair]] * k  # the same text, pieced otherwise
        differ += any(c != exact[pair] for c in copies)
    assert differ > 300  # BPE-dropout at 0.2 changes most of these sentences
    meta = json.loads((corpus.folder / "meta.json").read_text())
    assert meta["segmentations"] == 3 and meta["pairs"] == 400
    assert [len(ids) for ids in corpus.valid_sets[0].src] == [len(ids) for ids in corpus.src_vocab.encode(
        corpus.valid_sets[0].src_text)]  # validation is never sampled


def test_epochs_differ_and_the_same_seed_and_epoch_give_the_same_batches(words, tmp_path):
    cfg = config_from_dict(reversal_config(words, **SAMPLED))
    a = Corpus(cfg, tmp_path / "a", reuse_vocab=False)
    b = Corpus(cfg, tmp_path / "b", reuse_vocab=False)  # prepared again, in another cache
    assert a.folder.name == b.folder.name
    for name in ("src.ids", "tgt.ids", "src.lengths"):
        assert (a.folder / name).read_bytes() == (b.folder / name).read_bytes()
    epochs = [a.epoch(300, "tokens", 1, e) for e in range(3)]
    again = b.epoch(300, "tokens", 1, 1)
    assert all(np.array_equal(x, y) for x, y in zip(epochs[1], again))
    rows = [np.sort(np.concatenate(e)) for e in epochs]
    assert all(len(r) == 400 and np.array_equal(r // 3, np.arange(400)) for r in rows)  # each pair once
    assert not np.array_equal(rows[0], rows[1]) and not np.array_equal(rows[1], rows[2])
    assert not np.array_equal(rows[1], np.sort(np.concatenate(a.epoch(300, "tokens", 2, 1))))  # another seed
    batch = a.batch(epochs[0][0])  # a batch of the sentences its rows name
    assert batch.src.shape[0] == len(epochs[0][0])


def test_off_the_cache_is_as_before(words, tmp_path):
    corpus = Corpus(config_from_dict(reversal_config(words)), tmp_path / "run", reuse_vocab=False)
    assert corpus.segmentations == 1 and len(corpus.src.lengths) == 400
    text = open(words["train"] + ".src", encoding="utf-8").read().splitlines()
    assert sentences(corpus, range(400)) == corpus.src_vocab.encode(text)


def test_training_on_sampled_segmentations_resumes_exactly(words, tmp_path):
    tiny = dict(SAMPLED, train__max_steps=24, train__valid_every=12, train__batch_size=2000,
                model__embedding_size=32, model__encoder_hidden_size=32, model__decoder_hidden_size=32)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(config_from_dict(reversal_config(words, **tiny)), straight)
    train(config_from_dict(reversal_config(words, **dict(tiny, train__max_steps=12))), resumed)
    train(config_from_dict(reversal_config(words, **tiny)), resumed, resume=True)
    assert same_last_checkpoints(straight, resumed)["epoch"] >= 2  # epochs of other segmentations crossed
