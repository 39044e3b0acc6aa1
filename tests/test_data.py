import json

import numpy as np
import pytest

from nmt.config import DataConfig
from nmt.data import batch_of, epoch_batches, length_filter, load_split
from nmt.errors import DataError
from nmt.io import read_lines
from nmt.vocab import END, PAD


def write_pair(prefix, src, tgt, src_lang="de", tgt_lang="en"):
    (prefix.parent / f"{prefix.name}.{src_lang}").write_text("".join(s + "\n" for s in src), encoding="utf-8")
    (prefix.parent / f"{prefix.name}.{tgt_lang}").write_text("".join(t + "\n" for t in tgt), encoding="utf-8")


def test_text_split_reads_aligned_files(tmp_path):
    write_pair(tmp_path / "train", ["Ein Hund.", "Zwei Katzen."], ["A dog.", "Two cats."])
    src, tgt = load_split(DataConfig(), str(tmp_path / "train"))
    assert src == ["Ein Hund.", "Zwei Katzen."] and tgt == ["A dog.", "Two cats."]


def test_bundled_multi30k_is_complete():
    src, tgt = load_split(DataConfig(), "data/multi30k/train")
    assert len(src) == len(tgt) == 29000
    assert len(read_lines("data/multi30k/test2016.en")) == 1000


def test_misaligned_files_are_named(tmp_path):
    write_pair(tmp_path / "train", ["a", "b", "c"], ["x", "y"])
    with pytest.raises(DataError, match=r"train\.de has 3 lines but .*train\.en has 2"):
        load_split(DataConfig(), str(tmp_path / "train"))


def test_empty_corpus_and_missing_file(tmp_path):
    write_pair(tmp_path / "train", [], [])
    with pytest.raises(DataError, match=r"train\.de: the training corpus is empty"):
        load_split(DataConfig(), str(tmp_path / "train"), "training")
    with pytest.raises(DataError, match=r"nothere\.de: file not found"):
        load_split(DataConfig(), str(tmp_path / "nothere"))


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "bad.de"
    path.write_bytes("gut\nauch gut\n".encode() + b"schlecht \xff\xfe\n")
    with pytest.raises(DataError, match=r"bad\.de:3: invalid UTF-8 at byte 9"):
        read_lines(path)


def test_crlf_and_missing_final_newline(tmp_path):
    path = tmp_path / "x.en"
    path.write_bytes(b"one\r\ntwo")
    assert read_lines(path) == ["one", "two"]


def test_datasets_local_files_with_nested_fields(tmp_path):
    rows = [{"translation": {"de": "Ein Hund.", "en": "A dog."}},
            {"translation": {"de": "Eine Katze.", "en": "A cat."}}]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = DataConfig(loader="json", src_field="translation.de", tgt_field="translation.en")
    assert load_split(cfg, str(path)) == (["Ein Hund.", "Eine Katze."], ["A dog.", "A cat."])
    csv = tmp_path / "train.csv"
    csv.write_text("german,english\nEin Hund.,A dog.\n", encoding="utf-8")
    cfg = DataConfig(loader="csv", src_field="german", tgt_field="english")
    assert load_split(cfg, str(csv)) == (["Ein Hund."], ["A dog."])


def test_datasets_parquet_and_missing_field(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"de": ["Hallo Welt."], "en": ["Hello world."]}), path)
    assert load_split(DataConfig(loader="parquet"), str(path)) == (["Hallo Welt."], ["Hello world."])
    with pytest.raises(DataError, match="record 1: no field 'fr'"):
        load_split(DataConfig(loader="parquet", tgt_lang="fr"), str(path))


def test_hub_style_dataset_name_on_a_local_folder(tmp_path):
    """The hub code path (load_dataset(name, split=...)), exercised offline on a local dataset folder."""
    folder = tmp_path / "my_corpus"
    folder.mkdir()
    for split, n in (("train", 3), ("validation", 2)):
        rows = [{"de": f"Satz {i}.", "en": f"Sentence {i}."} for i in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(loader=str(folder))
    src, tgt = load_split(cfg, "validation")
    assert src == ["Satz 0.", "Satz 1."] and tgt == ["Sentence 0.", "Sentence 1."]
    with pytest.raises(DataError, match="cannot load with datasets"):
        load_split(cfg, "nosuchsplit")


def test_filter_counts():
    src, tgt = np.array([3, 200, 0, 2, 10]), np.array([4, 3, 1, 9, 12])
    keep, counts = length_filter(src, tgt, max_len=100, max_ratio=3.0)
    assert np.flatnonzero(keep).tolist() == [0, 4]
    assert counts == {"kept": 2, "empty": 1, "too_long": 1, "bad_ratio": 1}


def test_batch_follows_the_end_marker_protocol():
    batch = batch_of([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]])
    assert batch.src.tolist() == [[5, 6, 7, END], [8, END, PAD, PAD]]
    assert batch.src_lengths.tolist() == [4, 2]
    assert batch.tgt_in.tolist() == [[END, 9, 10, PAD], [END, 11, 12, 13]]
    assert batch.tgt_out.tolist() == [[9, 10, END, PAD], [11, 12, 13, END]]
    assert batch.n_tokens == 7


def test_token_batches_cover_the_epoch_once_and_respect_the_budget():
    rng = np.random.default_rng(0)
    src_lens, tgt_lens = rng.integers(1, 40, 1000), rng.integers(1, 40, 1000)
    batches = epoch_batches(src_lens, tgt_lens, 600, "tokens", seed=3, epoch=0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    for b in batches:
        longest = max(src_lens[b].max(), tgt_lens[b].max()) + 1
        assert len(b) == 1 or len(b) * longest <= 600
    again = epoch_batches(src_lens, tgt_lens, 600, "tokens", seed=3, epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other = epoch_batches(src_lens, tgt_lens, 600, "tokens", seed=3, epoch=1)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other))
    sentences = epoch_batches(src_lens, tgt_lens, 64, "sentences", seed=3, epoch=0)
    assert max(len(b) for b in sentences) == 64
