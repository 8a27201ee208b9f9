import os

import pytest

from source_code.text.vocabulary import (
    END,
    PAD,
    START,
    UNK,
    Vocabulary,
    clean_caption,
    max_caption_length,
)


# -- clean_caption ---------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A child in a pink dress is climbing up a set of stairs in an entry way .",
         ["a", "child", "in", "a", "pink", "dress", "is", "climbing", "up", "a", "set",
          "of", "stairs", "in", "an", "entry", "way"]),
        ("Two DOGS, playing!", ["two", "dogs", "playing"]),
        ("The dog's toy", ["the", "dog", "toy"]),  # "s" dropped after the split
        ("dog-sled race", ["dog", "sled", "race"]),
        ("3 men and 10th player x2", ["men", "and", "player"]),
        ("I saw a B at 5pm", ["saw", "a", "at"]),
        ("snake_case", ["snake", "case"]),
        ("  spaced\tout\nwords  ", ["spaced", "out", "words"]),
        ("", []),
        ("... !!!", []),
        ("Café «crème»", ["café", "crème"]),
    ],
)
def test_clean_caption(text, expected):
    assert clean_caption(text) == expected


def test_clean_caption_rejects_non_str():
    with pytest.raises(TypeError):
        clean_caption(["a", "dog"])


def test_clean_caption_cannot_produce_specials():
    assert clean_caption("<start> dog <end> <pad> <unk>") == ["start", "dog", "end", "pad", "unk"]


# -- Vocabulary ------------------------------------------------------------

CAPTIONS = [
    ["a", "dog", "runs"],
    ["a", "dog", "jumps"],
    ["a", "cat", "runs"],
    ["the", "cat", "sits"],
]


def test_specials_fixed_indices():
    v = Vocabulary([PAD, START, END, UNK, "dog"])
    assert (v.pad_id, v.start_id, v.end_id, v.unk_id) == (0, 1, 2, 3)
    assert [v.index(t) for t in (PAD, START, END, UNK)] == [0, 1, 2, 3]
    assert v.index("dog") == 4 and v.word(4) == "dog"


def test_build_orders_by_count_then_word():
    v = Vocabulary.build(CAPTIONS, min_count=1)
    assert v.tokens == [PAD, START, END, UNK, "a", "cat", "dog", "runs", "jumps", "sits", "the"]
    v2 = Vocabulary.build(CAPTIONS, min_count=2)
    assert v2.tokens == [PAD, START, END, UNK, "a", "cat", "dog", "runs"]
    assert len(Vocabulary.build(CAPTIONS)) == 4  # default min_count=10: specials only


def test_build_accepts_generator_and_ignores_specials():
    v = Vocabulary.build((c for c in CAPTIONS + [[START, "dog", END, PAD]]), min_count=3)
    assert v.tokens == [PAD, START, END, UNK, "a", "dog"]


def test_build_rejects_strings_and_bad_min_count():
    with pytest.raises(TypeError):
        Vocabulary.build(["a dog runs"], min_count=1)
    with pytest.raises(ValueError):
        Vocabulary.build(CAPTIONS, min_count=0)


@pytest.mark.parametrize(
    "tokens",
    [
        [PAD, START, END, UNK, "dog", "dog"],
        [PAD, START, END, UNK, "dog", PAD],
        [START, PAD, END, UNK, "dog"],
        [PAD, START, END, "dog"],
        ["dog"],
        [],
        [PAD, START, END, UNK, ""],
        [PAD, START, END, UNK, "two words"],
        [PAD, START, END, UNK, "new\nline"],
    ],
)
def test_init_validation(tokens):
    with pytest.raises(ValueError):
        Vocabulary(tokens)


def test_lookups():
    v = Vocabulary.build(CAPTIONS, min_count=2)
    assert len(v) == 8
    assert "dog" in v and "sits" not in v and PAD in v
    assert v.index("sits") == v.unk_id
    assert v.word(v.index("cat")) == "cat"
    with pytest.raises(IndexError):
        v.word(len(v))
    with pytest.raises(IndexError):
        v.word(-1)


def test_tokens_is_read_only_copy():
    v = Vocabulary.build(CAPTIONS, min_count=1)
    toks = v.tokens
    toks.append("zzz")
    assert "zzz" not in v and len(v.tokens) == len(v)
    with pytest.raises(AttributeError):
        v.tokens = []


def test_encode_decode_roundtrip():
    v = Vocabulary.build(CAPTIONS, min_count=1)
    ids = v.encode(["a", "dog", "runs"])
    assert ids == [v.start_id, v.index("a"), v.index("dog"), v.index("runs"), v.end_id]
    assert v.decode(ids) == ["a", "dog", "runs"]
    assert v.encode([]) == [v.start_id, v.end_id]
    assert v.encode(["a", "zebra"]) == [1, v.index("a"), v.unk_id, 2]
    assert v.decode(v.encode(["a", "zebra"])) == ["a", UNK]


def test_encode_max_len_and_pad():
    v = Vocabulary.build(CAPTIONS, min_count=1)
    words = ["a", "dog", "runs"]
    assert v.encode(words, max_len=2) == [1, v.index("a"), v.index("dog"), 2]
    assert v.encode(words, max_len=5) == v.encode(words)
    assert v.encode(words, max_len=0) == [1, 2]
    padded = v.encode(words, max_len=5, pad=True)
    assert len(padded) == 7 and padded[-2:] == [0, 0]
    assert v.decode(padded) == words
    assert len(v.encode(words, max_len=2, pad=True)) == 4
    with pytest.raises(ValueError):
        v.encode(words, pad=True)
    with pytest.raises(ValueError):
        v.encode(words, max_len=-1)
    with pytest.raises(TypeError):
        v.encode("a dog")


def test_decode_stops_at_end_and_skips_start_pad():
    v = Vocabulary.build(CAPTIONS, min_count=1)
    d, c = v.index("dog"), v.index("cat")
    assert v.decode([1, 0, d, 0, c, 2, d, d]) == ["dog", "cat"]
    assert v.decode([d, c]) == ["dog", "cat"]  # no END: everything
    assert v.decode([2, d]) == []
    np = pytest.importorskip("numpy")
    assert v.decode(np.array([1, d, 2, 0], dtype=np.int64)) == ["dog"]


def test_save_load_roundtrip(tmp_path):
    v = Vocabulary.build(CAPTIONS + [["café", "naïve"]], min_count=1)
    path = tmp_path / "sub" / "vocab.txt"
    v.save(path)
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[:4] == [PAD, START, END, UNK]
    assert text.endswith("\n")
    assert Vocabulary.load(path) == v
    assert Vocabulary.load(str(path)).tokens == v.tokens
    # no temporary file left behind
    assert os.listdir(path.parent) == ["vocab.txt"]


def test_save_overwrites_atomically(tmp_path, monkeypatch):
    path = tmp_path / "vocab.txt"
    old = Vocabulary.build(CAPTIONS, min_count=2)
    old.save(path)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        Vocabulary.build(CAPTIONS, min_count=1).save(path)
    monkeypatch.undo()
    assert Vocabulary.load(path) == old
    assert os.listdir(tmp_path) == ["vocab.txt"]


def test_load_accepts_crlf_and_rejects_bad_files(tmp_path):
    p = tmp_path / "v.txt"
    p.write_bytes(b"<pad>\r\n<start>\r\n<end>\r\n<unk>\r\ndog\r\n")
    assert Vocabulary.load(p).tokens[-1] == "dog"
    p.write_text("<pad>\n<start>\n<end>\n<unk>\n\ndog\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 5"):
        Vocabulary.load(p)
    p.write_text("<pad>\n<start>\n<end>\n<unk>\ndog\ndog\n", encoding="utf-8")
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary.load(p)
    p.write_text("dog\n", encoding="utf-8")
    with pytest.raises(ValueError):
        Vocabulary.load(p)


# -- max_caption_length ------------------------------------------------------


def test_max_caption_length():
    caps = [["w"] * n for n in range(1, 21)]  # lengths 1..20
    assert max_caption_length(caps) == 20
    assert max_caption_length(caps, 95) == 19
    assert max_caption_length(caps, 50) == 10
    assert max_caption_length(caps, 51) == 11
    assert max_caption_length(caps, 0) == 1
    assert max_caption_length(iter(caps), 100.0) == 20
    assert max_caption_length([[]]) == 0


def test_max_caption_length_errors():
    with pytest.raises(ValueError):
        max_caption_length([])
    with pytest.raises(ValueError):
        max_caption_length([["a"]], 101)
    with pytest.raises(ValueError):
        max_caption_length([["a"]], -1)
