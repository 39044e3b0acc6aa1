from nmt.vocab import END, PAD, UNK, Vocab, train_vocab

SENTENCES = ["Ein Hund läuft im Park.", "Zwei Männer spielen Fußball.", "Eine Frau liest ein Buch."] * 20


def test_special_ids_and_end_marker_display(tmp_path):
    vocab = train_vocab(SENTENCES, tmp_path / "spm.model", 320)
    assert (vocab.sp.pad_id(), vocab.sp.unk_id(), vocab.sp.eos_id()) == (PAD, UNK, END)
    ids = vocab.encode(["Ein Hund"])[0]
    assert END not in ids
    assert vocab.pieces(ids + [END])[-1] == "_"
    assert Vocab(tmp_path / "spm.model").fingerprint == vocab.fingerprint


def test_literal_underscore_and_unseen_characters_round_trip(tmp_path):
    vocab = train_vocab(SENTENCES, tmp_path / "spm.model", 320)
    texts = ["snake_case und _ allein", "ein Hund_läuft", "Ünïcödé ☃ 日本語 _"]
    ids = vocab.encode(texts)
    assert all(END not in seq and UNK not in seq for seq in ids)
    assert vocab.decode(ids) == texts


def test_bpe_and_unigram(tmp_path):
    for kind in ("bpe", "unigram"):
        vocab = train_vocab(SENTENCES, tmp_path / f"{kind}.model", 300, kind)
        assert vocab.sp.decode(vocab.encode(["Ein Buch."]))[0] == "Ein Buch."
