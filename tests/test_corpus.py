"""The training corpus is prepared once into a memory-mapped cache and mapped ever after."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nmt import corpus as corpus_module
from nmt.config import DataConfig, config_from_dict
from nmt.corpus import Corpus, _sample, prepare
from nmt.data import TextPairs, epoch_batches, load_split, pair_source
from nmt.errors import DataError, NmtError
from nmt.train import train
from nmt.vocab import train_vocab

from conftest import SMALL_MODEL, reversal_config, reversal_pairs, write_split

ROOT = Path(__file__).resolve().parent.parent


def data_config(prefix: str, **changes) -> DataConfig:
    return DataConfig(**dict(dict(train=prefix, valid="", test="", src_lang="src", tgt_lang="tgt",
                                  vocab_size=300), **changes))


def folders(cache: Path, kind: str) -> list[str]:
    return sorted(p.name for p in cache.glob(f"{kind}-*"))


@pytest.fixture
def small(tmp_path) -> str:
    return write_split(tmp_path, "train", *reversal_pairs(400, seed=5))


def test_a_second_run_maps_what_the_first_prepared(small, tmp_path, caplog):
    cache = tmp_path / "shared"
    data = data_config(small, cache_dir=str(cache))
    first = prepare(data, tmp_path / "run1", reuse_vocab=False)
    caplog.clear()
    with caplog.at_level("INFO", logger="nmt"):
        second = prepare(data, tmp_path / "run2", reuse_vocab=False)
    assert first == second and folders(cache, "corpus") == [first.name]
    assert "vocabulary: copied from" in caplog.text and "training data: mapped" in caplog.text
    assert "preparing the training data" not in caplog.text
    vocab = [(tmp_path / run / "spm.model").read_bytes() for run in ("run1", "run2")]
    assert vocab[0] == vocab[1]
    meta = json.loads((first / "meta.json").read_text())
    assert meta["pairs"] == 400 and meta["src"]["dtype"] == "<u2"
    assert sorted(p.name for p in cache.iterdir()) == sorted([first.name] + folders(cache, "vocab"))


def test_what_is_mapped_is_what_the_vocabulary_encodes(small, tmp_path):
    run = tmp_path / "run"
    cfg = config_from_dict(reversal_config({"train": small, "valid": "", "test": ""}))
    corpus = Corpus(cfg, run, reuse_vocab=False)
    src, tgt = load_split(cfg.data, small)
    assert isinstance(corpus.src.flat, np.memmap) and corpus.src.flat.dtype == np.uint16
    for i in (0, 17, 399):
        for pieces, text, vocab in ((corpus.src, src, corpus.src_vocab),
                                    (corpus.tgt, tgt, corpus.tgt_vocab)):
            start, length = pieces.offsets[i], pieces.lengths[i]
            assert pieces.flat[start:start + length].tolist() == vocab.encode([text[i]])[0]
    assert corpus.target_tokens([np.array([0, 1]), np.array([5])]) == sum(
        len(corpus.tgt_vocab.encode([tgt[i]])[0]) + 1 for i in (0, 1, 5))


def test_any_change_to_the_corpus_or_the_settings_prepares_again(small, tmp_path):
    cache = tmp_path / "shared"
    data = data_config(small, cache_dir=str(cache))
    run = lambda name, d=data: prepare(d, tmp_path / name, reuse_vocab=False).name  # noqa: E731
    first = run("a")
    target = Path(small + ".tgt")
    stat = target.stat()
    text = target.read_text()
    target.write_text(text.replace("a", "b", 1))  # same size, modification time put back
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size
    changed = run("b")
    assert changed != first
    target.write_text(text)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert run("c") == first  # the same content again: the first preparation
    assert len(folders(cache, "vocab")) == 2
    shorter = run("d", data_config(small, cache_dir=str(cache), max_len=5))
    assert shorter not in (first, changed)
    assert len(folders(cache, "vocab")) == 2  # the vocabulary reused
    bigger = run("e", data_config(small, cache_dir=str(cache), subword_type="unigram"))
    assert bigger not in (first, changed, shorter) and len(folders(cache, "vocab")) == 3
    assert json.loads((cache / shorter / "meta.json").read_text())["filter"]["too_long"] > 0


def test_an_interrupted_preparation_leaves_nothing_taken_for_complete(tmp_path):
    prefix = write_split(tmp_path, "big", *reversal_pairs(120_000, seed=6))
    cache = tmp_path / "cache"
    script = (f"import logging, sys; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path; "
              "from nmt.corpus import prepare; from nmt.config import DataConfig; "
              f"prepare(DataConfig(train={prefix!r}, src_lang='src', tgt_lang='tgt', "
              f"vocab_size=300, cache_dir={str(cache)!r}), Path({str(tmp_path / 'run')!r}), "
              "False)")
    for sent in (signal.SIGTERM, signal.SIGKILL):
        child = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while not list(cache.glob(".corpus-*.tmp")) and time.time() < deadline \
                and child.poll() is None:
            time.sleep(0.05)
        assert child.poll() is None, "the preparation ended before it could be stopped"
        child.send_signal(sent)
        assert child.wait() != 0
        # SIGTERM (a scheduler's) stops it as Ctrl-C does: it removes its folder; kill -9 cannot
        assert bool(list(cache.glob(".corpus-*.tmp"))) == (sent == signal.SIGKILL)
        assert not folders(cache, "corpus")
    folder = prepare(DataConfig(train=prefix, src_lang="src", tgt_lang="tgt", vocab_size=300,
                                cache_dir=str(cache)), tmp_path / "run2", reuse_vocab=False)
    assert folders(cache, "corpus") == [folder.name] and not list(cache.glob(".*.tmp"))
    assert json.loads((folder / "meta.json").read_text())["pairs"] == 120_000


def test_an_error_while_preparing_removes_the_partial_folder(small, tmp_path, monkeypatch):
    data = data_config(small, cache_dir=str(tmp_path / "cache"))
    real_open = open

    def disk_fills(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "w" in mode and str(path).endswith("tgt.ids"):
            def write(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            f.write = write
        return f

    monkeypatch.setattr(corpus_module, "open", disk_fills, raising=False)
    with pytest.raises(NmtError, match=r"preparing the training data in .*cache: no space left "
                                       "on the device"):
        prepare(data, tmp_path / "run", reuse_vocab=False)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == folders(tmp_path / "cache", "vocab")


def test_a_damaged_cache_is_refused_with_one_line(small, tmp_path):
    cfg = config_from_dict(reversal_config({"train": small, "valid": "", "test": ""}))
    folder = Corpus(cfg, tmp_path / "run", reuse_vocab=False).folder
    with open(folder / "src.ids", "r+b") as f:
        f.truncate(10)
    with pytest.raises(DataError,
                       match=r"src\.ids: damaged .* delete .* to prepare the data again"):
        Corpus(cfg, tmp_path / "run", reuse_vocab=True)


def test_a_file_that_changes_while_it_is_prepared_is_not_kept(small, tmp_path, monkeypatch):
    data = data_config(small, cache_dir=str(tmp_path / "cache"))
    real_side = TextPairs.side

    def append_while_reading(self, which, size=50_000):
        for chunk in real_side(self, which, size):
            yield chunk
        with open(self.paths[1], "a") as f:
            f.write("z y x\n")

    monkeypatch.setattr(TextPairs, "side", append_while_reading)
    with pytest.raises(DataError, match=r"train\.tgt: changed while it was read; run again"):
        prepare(data, tmp_path / "run", reuse_vocab=False)
    assert not folders(tmp_path / "cache", "corpus")


def test_sentencepiece_trains_on_a_fixed_sample_and_on_all_of_a_small_corpus(small, tmp_path):
    source = pair_source(data_config(small), small)
    n = source.identity()["pairs"]
    src, tgt = load_split(data_config(small), small)
    everything = list(_sample(source, (0, 1), n, 0))
    assert everything == src + tgt == list(_sample(source, (0, 1), n, 10**6))
    drawn = list(_sample(source, (0, 1), n, 150))
    assert len(drawn) == 150 and drawn == list(_sample(source, (0, 1), n, 150))
    assert set(drawn) <= set(src + tgt) and len(set(drawn) & set(tgt)) > 0
    # Below the sample size the vocabulary is the one trained on every sentence in order.
    prepare(data_config(small), tmp_path / "run", reuse_vocab=False)
    whole = train_vocab(src + tgt, tmp_path / "whole.model", 300)
    assert (tmp_path / "run" / "spm.model").read_bytes() == whole.model_bytes


def test_datasets_records_are_streamed_in_batches(tmp_path):
    rows = [{"translation": {"de": f"Satz {i}.", "en": f"Sentence {i}."}} for i in range(7)]
    rows[5] = {"translation": {"de": "Kaputt."}}
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = DataConfig(loader="json", src_field="translation.de", tgt_field="translation.en")
    source = pair_source(cfg, str(path))
    assert [len(c) for c in source.side(0, size=3)] == [3, 3, 1]
    with pytest.raises(DataError, match=r"train\.jsonl: record 6: no field 'translation\.en'"):
        list(source.side(1, size=3))
    identity = source.identity()
    assert identity["pairs"] == 7 and identity["origin"]["sha256"]


@pytest.mark.parametrize("loader", ["json", "hub"])
def test_a_datasets_corpus_is_prepared_once(tmp_path, loader):
    """json files, and the hub path (load_dataset(name, split=...)) run offline on a local
    folder."""
    src, tgt = reversal_pairs(300, seed=8)
    folder = tmp_path / "corpus"
    folder.mkdir()
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps({"src": s, "tgt": t}) + "\n" for s, t in zip(src, tgt)))
    split, name = (str(path), "json") if loader == "json" else ("train", str(folder))
    cfg = config_from_dict(reversal_config({"train": split, "valid": "", "test": ""},
                                           data__loader=name))
    corpus = Corpus(cfg, tmp_path / "run", reuse_vocab=False)
    assert len(corpus.src.lengths) == 300
    assert corpus.src.flat[:corpus.src.lengths[0]].tolist() == corpus.src_vocab.encode([src[0]])[0]
    assert Corpus(cfg, tmp_path / "run", reuse_vocab=True).folder == corpus.folder  # mapped again


def reference_batches(src_lens, tgt_lens, batch_size, unit, seed, epoch):
    """The batching loop before it was vectorised, kept to show the batches did not change."""
    rng = np.random.default_rng([seed, epoch])
    order = np.lexsort((rng.random(len(src_lens)), tgt_lens, src_lens))
    batches, start, longest = [], 0, 0
    for pos, i in enumerate(order):
        longest = max(longest, src_lens[i] + 1, tgt_lens[i] + 1)
        n = pos - start + 1
        size = n * longest if unit == "tokens" else n
        if size > batch_size and n > 1:
            batches.append(order[start:pos])
            start, longest = pos, max(src_lens[i], tgt_lens[i]) + 1
    batches.append(order[start:])
    perm = rng.permutation(len(batches))
    return [batches[j] for j in perm]


@pytest.mark.parametrize("budget,unit", [(600, "tokens"), (50, "tokens"), (7, "tokens"),
                                         (1, "tokens"), (64, "sentences"), (1, "sentences")])
def test_vectorised_batches_are_the_batches_of_the_loop(budget, unit):
    rng = np.random.default_rng(budget)
    src_lens = rng.integers(1, 60, 3000).astype(np.int32)
    tgt_lens = rng.integers(1, 60, 3000).astype(np.int32)
    for seed, epoch in ((1, 0), (1, 1), (9, 4)):
        ours = epoch_batches(src_lens, tgt_lens, budget, unit, seed, epoch)
        theirs = reference_batches(src_lens, tgt_lens, budget, unit, seed, epoch)
        assert len(ours) == len(theirs)
        assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
        again = epoch_batches(src_lens.copy(), tgt_lens.copy(), budget, unit, seed, epoch)
        assert all(np.array_equal(a, b) for a, b in zip(ours, again))


def test_missing_validation_file_is_found_before_the_training_data_is_read(small, tmp_path,
                                                                            monkeypatch):
    def never(self):
        raise AssertionError("the training data was read")

    monkeypatch.setattr(TextPairs, "identity", never)
    cfg = config_from_dict(reversal_config({"train": small, "valid": str(tmp_path / "nope"),
                                            "test": ""}))
    with pytest.raises(DataError, match=r"nope\.src: file not found"):
        train(cfg, tmp_path / "run")


def test_resume_from_another_directory_with_a_shared_cache_is_exact(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_split(data_dir, "train", *reversal_pairs(1500, seed=11))
    write_split(data_dir, "valid", *reversal_pairs(40, seed=12))
    monkeypatch.chdir(tmp_path)  # the config names the data relative to here
    relative = {"train": "data/train", "valid": "data/valid", "test": ""}
    settings = dict(train__max_steps=12, train__valid_every=6, train__batch_size=300,
                    data__cache_dir="shared", **SMALL_MODEL)
    straight = tmp_path / "straight"
    train(config_from_dict(reversal_config(relative, **settings)), straight)
    half = tmp_path / "half"
    train(config_from_dict(reversal_config(relative, **dict(settings, train__max_steps=6))), half)
    assert len(folders(tmp_path / "shared", "corpus")) == 1  # the second run mapped the first's
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    from nmt.cli import train_main
    assert train_main(["--run-dir", str(half), "--resume", "--set", "train.max_steps=12",
                       "--no-test"]) == 0
    log = (half / "train.log").read_text()
    assert log.count("training data: mapped") == 2 and "preparing the training data" not in log
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(half / "checkpoints" / "last.pt", weights_only=False)
    assert a["train_state"]["step"] == b["train_state"]["step"] == 12
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["corpus"] == b["corpus"]


def test_bad_utf8_anywhere_is_named_by_file_and_line(tmp_path):
    prefix = write_split(tmp_path, "train", *reversal_pairs(300, seed=2))
    target = Path(prefix + ".tgt")
    lines = target.read_bytes().split(b"\n")
    lines[249] += b" \xc3"
    target.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"train\.tgt:250: invalid UTF-8 at byte"):
        prepare(data_config(prefix), tmp_path / "run", reuse_vocab=False)


def test_a_corpus_of_empty_lines_is_named(tmp_path):
    prefix = write_split(tmp_path, "train", ["", " "], ["", ""])
    with pytest.raises(DataError, match=r"train\.src: the training corpus holds no text"):
        prepare(data_config(prefix), tmp_path / "run", reuse_vocab=False)


def test_leftovers_of_killed_preparations_are_swept_and_foreign_folders_refused(small, tmp_path):
    import socket
    cache = tmp_path / "cache"
    data = data_config(small, cache_dir=str(cache))
    folder = prepare(data, tmp_path / "a", reuse_vocab=False)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that no longer runs
    stale = cache / f".corpus-0123.{socket.gethostname()}-{gone.pid}.tmp"
    live = cache / f".corpus-4567.{socket.gethostname()}-{os.getpid()}.tmp"
    stale.mkdir()
    live.mkdir()
    assert prepare(data, tmp_path / "b", reuse_vocab=False) == folder  # a cache hit sweeps too
    assert not stale.exists() and live.exists()
    live.rmdir()
    for name in os.listdir(folder):
        os.unlink(folder / name)  # a folder of that name that nmt did not complete
    with pytest.raises(DataError, match=r"incomplete \(no meta\.json\).*delete it"):
        prepare(data, tmp_path / "c", reuse_vocab=False)


def test_a_sample_as_large_as_the_corpus_is_the_same_vocabulary(small, tmp_path):
    cache = tmp_path / "cache"
    for k, sample in enumerate((0, 800, 10**9)):  # 400 pairs: 800 sentences
        prepare(data_config(small, cache_dir=str(cache), spm_sample_sentences=sample),
                tmp_path / f"run{k}", reuse_vocab=False)
    assert len(folders(cache, "vocab")) == 1 and len(folders(cache, "corpus")) == 1


def test_validation_and_test_sets_are_read_before_any_work(small, tmp_path, monkeypatch):
    def never(self):
        raise AssertionError("the training data was read")

    monkeypatch.setattr(TextPairs, "identity", never)
    valid = write_split(tmp_path, "valid", ["a b", "c"], ["b a"])
    cfg = config_from_dict(reversal_config({"train": small, "valid": valid, "test": ""}))
    with pytest.raises(DataError, match=r"valid\.src has 2 lines but .*valid\.tgt has 1"):
        train(cfg, tmp_path / "run")
    test = write_split(tmp_path, "test", ["a b"], ["b a"])
    Path(test + ".tgt").write_bytes(b"b \xff a\n")
    cfg = config_from_dict(reversal_config({"train": small, "valid": "", "test": test}))
    with pytest.raises(DataError, match=r"test\.tgt:1: invalid UTF-8"):
        train(cfg, tmp_path / "run2")


def test_paths_are_recorded_absolute_with_the_home_directory_expanded(tmp_path, monkeypatch):
    from nmt.data import absolute_paths
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    data = absolute_paths(DataConfig(train="corpus/train", valid="~/val", test="",
                                     cache_dir="~/cache"))
    assert (data.train, data.valid, data.test) == \
        (str(tmp_path / "corpus/train"), str(tmp_path / "val"), "")
    assert data.cache_dir == str(tmp_path / "cache") and data.loader == "text"
    hub = absolute_paths(DataConfig(loader="wmt16", train="train", valid="validation"))
    assert (hub.loader, hub.train, hub.valid) == ("wmt16", "train", "validation")
