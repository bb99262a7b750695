"""Token data: sources, tokenization, splits, clear errors, and deterministic rank-sharded batches."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from qknorm.errors import ConfigError, DataError
from qknorm.data import sources as D_src
from qknorm.data import tokenizer as D_tok
from qknorm.data.batcher import Batcher
from qknorm.data.sources import DEFAULT_CORPUS_MAX_BYTES, FILE_SEPARATOR, default_corpus_bytes, default_corpus_files
from qknorm.data.tokens import load_tokens

SEP = list(FILE_SEPARATOR)


def _write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _all(td) -> list[int]:
    return [int(t) for t in np.concatenate([td.train, td.val])]


# ---------------------------------------------------------------------------------------------- default corpus


def test_default_corpus_files_deterministic_sorted_filtered_and_within_budget():
    files = default_corpus_files()
    assert files and files == default_corpus_files()
    root = Path(os.__file__).resolve().parent
    rel = [f.relative_to(root).as_posix() for f in files]
    assert rel == sorted(rel)
    assert all(r.endswith(".py") for r in rel)
    excluded = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3"}
    assert not any(set(r.split("/")[:-1]) & excluded for r in rel)
    assert sum(f.stat().st_size for f in files) <= DEFAULT_CORPUS_MAX_BYTES
    # a smaller budget is a prefix of the same order
    small = default_corpus_files(200_000)
    assert small == files[: len(small)] and 0 < len(small) < len(files)


def test_default_corpus_bytes_are_the_files_each_followed_by_the_separator():
    files = default_corpus_files(100_000)
    expected = b"".join(f.read_bytes() + FILE_SEPARATOR for f in files)
    assert default_corpus_bytes(100_000) == expected == default_corpus_bytes(100_000)


def test_default_corpus_tokens_byte_level_and_deterministic():
    a = load_tokens(max_bytes=300_000)
    b = load_tokens(max_bytes=300_000)
    assert a.vocab_size == 256 and a.train.dtype == np.uint16
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    assert len(a.train) > 50_000 and int(a.train.max()) < 256
    assert bytes(np.concatenate([a.train, a.val]).astype(np.uint8)) == default_corpus_bytes(300_000)
    assert "default corpus" in a.source and "standard-library" in a.source


def test_default_corpus_full_size():
    td = load_tokens()
    assert 4_000_000 < td.n_tokens <= DEFAULT_CORPUS_MAX_BYTES + 2 * 1000
    assert len(td.val) == int(td.n_tokens * 0.05)


# ---------------------------------------------------------------------------------------------- text sources


def test_text_file_is_its_bytes_plus_separator(tmp_path):
    f = _write(tmp_path / "a.txt", "héllo\nwörld\n")
    td = load_tokens(f, val_fraction=0.0)
    assert _all(td) == list("héllo\nwörld\n".encode()) + SEP
    assert td.vocab_size == 256 and len(td.val) == 0
    assert str(f) in td.source


def test_split_is_the_last_fraction(tmp_path):
    f = _write(tmp_path / "a.txt", "x" * 98)  # 100 tokens with the separator
    td = load_tokens(f, val_fraction=0.1)
    assert len(td.train) == 90 and len(td.val) == 10
    assert list(td.val) == [ord("x")] * 8 + SEP
    assert len(load_tokens(f, val_fraction=0.05).val) == 5


def test_directory_sorted_recursive_skipping_hidden_empty_and_binary(tmp_path):
    _write(tmp_path / "b.txt", "B")
    _write(tmp_path / "a.txt", "A")
    _write(tmp_path / "sub" / "c.md", "C")
    _write(tmp_path / ".git" / "x.txt", "hidden")
    _write(tmp_path / ".hidden.txt", "hidden")
    _write(tmp_path / "empty.txt", "")
    _write(tmp_path / "blob.dat", b"\x00\x01\x02" * 100)
    td = load_tokens(tmp_path, val_fraction=0.0)
    assert _all(td) == [ord("A")] + SEP + [ord("B")] + SEP + [ord("C")] + SEP
    assert "3 text files" in td.source and "blob.dat (contains NUL bytes)" in td.source


def test_glob_pattern_plain_and_recursive(tmp_path):
    _write(tmp_path / "a.txt", "A")
    _write(tmp_path / "b.log", "L")
    _write(tmp_path / "sub" / "c.txt", "C")
    flat = load_tokens(str(tmp_path / "*.txt"), val_fraction=0.0)
    assert _all(flat) == [ord("A")] + SEP
    deep = load_tokens(str(tmp_path / "**" / "*.txt"), val_fraction=0.0)
    assert _all(deep) == [ord("A")] + SEP + [ord("C")] + SEP


def test_max_bytes_cuts_user_text(tmp_path):
    _write(tmp_path / "a.txt", "A" * 10)
    _write(tmp_path / "b.txt", "B" * 10)
    td = load_tokens(tmp_path, val_fraction=0.0, max_bytes=15)
    assert _all(td) == [ord("A")] * 10 + SEP + [ord("B")] * 5 + SEP


def test_latin1_text_with_a_few_invalid_utf8_bytes_is_accepted(tmp_path):
    f = _write(tmp_path / "fr.txt", "Le café est très bon, à côté de la forêt. ".encode("latin-1") * 10)
    assert load_tokens(f).vocab_size == 256


# ---------------------------------------------------------------------------------------------- errors


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"data path .*nope\.txt does not exist"):
        load_tokens(tmp_path / "nope.txt")


def test_empty_file(tmp_path):
    f = _write(tmp_path / "empty.txt", "")
    with pytest.raises(DataError, match=r"empty\.txt is empty"):
        load_tokens(f)


def test_binary_file_with_nul_bytes(tmp_path):
    f = _write(tmp_path / "model.pt", b"PK\x03\x04\x00\x00" + bytes(range(256)) * 4)
    with pytest.raises(DataError, match=r"model\.pt contains NUL bytes; expected a text file"):
        load_tokens(f)


def test_binary_file_of_invalid_utf8_without_nul(tmp_path):
    rng = np.random.default_rng(0)
    f = _write(tmp_path / "noise.txt", bytes(rng.integers(128, 256, size=4000, dtype=np.uint8)))
    with pytest.raises(DataError, match=r"noise\.txt is not UTF-8 text"):
        load_tokens(f)


def test_empty_directory_and_directory_of_only_binary(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match=r"directory .*d holds no non-empty text files$"):
        load_tokens(tmp_path / "d")
    _write(tmp_path / "d" / "x.bin.dat", b"\x00" * 10)
    with pytest.raises(DataError, match=r"holds no non-empty text files \(skipped 1: .*NUL"):
        load_tokens(tmp_path / "d")


def test_glob_with_no_match(tmp_path):
    with pytest.raises(DataError, match=r"pattern .*\*\.txt matched no files"):
        load_tokens(str(tmp_path / "*.txt"))


def test_unreadable_file(tmp_path, monkeypatch):
    f = _write(tmp_path / "secret.txt", "x")

    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(D_src, "open", deny, raising=False)
    with pytest.raises(DataError, match=r"cannot read .*secret\.txt: permission denied"):
        load_tokens(f)


def test_corpus_shorter_than_one_sequence(tmp_path):
    td = load_tokens(_write(tmp_path / "tiny.txt", "abc"), val_fraction=0.0)  # 5 tokens
    with pytest.raises(DataError, match=r"training tokens: 5 tokens is shorter than one training sequence \(seq_len=64 needs at least 65"):
        Batcher(td.train, batch_size=2, seq_len=64, seed=0, name="training tokens")
    Batcher(td.train, batch_size=2, seq_len=4, seed=0)  # exactly seq_len + 1 is enough


def test_errors_are_one_line(tmp_path):
    f = _write(tmp_path / "z.bin", b"\x01\x02\x03")
    for call in (lambda: load_tokens(tmp_path / "missing"), lambda: load_tokens(f)):
        with pytest.raises(DataError) as e:
            call()
        assert "\n" not in str(e.value)


def test_argument_errors(tmp_path):
    with pytest.raises(ConfigError, match="val_fraction"):
        load_tokens(val_fraction=1.0)
    tokens = np.arange(100, dtype=np.uint16)
    with pytest.raises(ConfigError, match=r"batch_size .* divisible by the number of processes \(4\)"):
        Batcher(tokens, batch_size=6, seq_len=4, seed=0, world_size=4)
    with pytest.raises(ConfigError, match="rank"):
        Batcher(tokens, batch_size=4, seq_len=4, seed=0, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="seed"):
        Batcher(tokens, batch_size=4, seq_len=4, seed=-1)


# ---------------------------------------------------------------------------------------------- token files


def test_uint16_bin_memmap_round_trip(tmp_path):
    known = np.array([0, 1, 65535, 7, 300], dtype=np.uint16)
    known.tofile(tmp_path / "tok.bin")
    td = load_tokens(tmp_path / "tok.bin", val_fraction=0.2)
    assert isinstance(td.train, np.memmap) and td.train.dtype == np.uint16
    assert list(td.train) == [0, 1, 65535, 7] and list(td.val) == [300]
    assert td.vocab_size == 65536


def test_uint32_bin_memmap_round_trip_and_sidecar_vocab(tmp_path):
    known = np.array([70_000, 3, 5, 2**32 - 1, 9], dtype=np.uint32)
    known.tofile(tmp_path / "tok.uint32.bin")
    td = load_tokens(tmp_path / "tok.uint32.bin", val_fraction=0.0)
    assert isinstance(td.train, np.memmap) and td.train.dtype == np.uint32
    assert list(td.train) == known.tolist() and td.vocab_size == 2**32
    np.array([1, 2, 3], dtype=np.uint32).tofile(tmp_path / "v.uint32.bin")
    (tmp_path / "v.uint32.bin.json").write_text(json.dumps({"vocab_size": 100_000}))
    assert load_tokens(tmp_path / "v.uint32.bin").vocab_size == 100_000


def test_bin_size_not_a_multiple_of_the_dtype(tmp_path):
    _write(tmp_path / "odd.bin", b"\x01\x02\x03")
    with pytest.raises(DataError, match=r"odd\.bin: size 3 bytes is not a multiple of 2 \(uint16 tokens\)"):
        load_tokens(tmp_path / "odd.bin")
    _write(tmp_path / "odd.uint32.bin", b"\x01" * 6)
    with pytest.raises(DataError, match=r"size 6 bytes is not a multiple of 4 \(uint32"):
        load_tokens(tmp_path / "odd.uint32.bin")
    _write(tmp_path / "zero.bin", b"")
    with pytest.raises(DataError, match=r"zero\.bin: token file is empty"):
        load_tokens(tmp_path / "zero.bin")


def test_bad_sidecar(tmp_path):
    np.array([1, 2], dtype=np.uint16).tofile(tmp_path / "t.bin")
    (tmp_path / "t.bin.json").write_text('{"vocab": 5}')
    with pytest.raises(DataError, match=r"t\.bin\.json: expected a JSON object with a positive integer 'vocab_size'"):
        load_tokens(tmp_path / "t.bin")


def test_npy_token_files(tmp_path):
    np.save(tmp_path / "a.npy", np.array([4, 5, 6, 7], dtype=np.uint16))
    td = load_tokens(tmp_path / "a.npy", val_fraction=0.0)
    assert isinstance(td.train, np.memmap) and list(td.train) == [4, 5, 6, 7] and td.vocab_size == 8
    np.save(tmp_path / "b.npy", np.array([1, 70_000], dtype=np.int64))
    td = load_tokens(tmp_path / "b.npy", val_fraction=0.0)
    assert td.train.dtype == np.uint32 and list(td.train) == [1, 70_000]
    np.save(tmp_path / "c.npy", np.array([[1, 2]], dtype=np.int64))
    with pytest.raises(DataError, match="1-D integer token array"):
        load_tokens(tmp_path / "c.npy")
    np.save(tmp_path / "d.npy", np.array([-1, 2], dtype=np.int64))
    with pytest.raises(DataError, match=r"token ids must lie in \[0, 2\*\*32\)"):
        load_tokens(tmp_path / "d.npy")


def test_tokenizer_is_refused_for_token_files(tmp_path):
    np.array([1, 2], dtype=np.uint16).tofile(tmp_path / "t.bin")
    with pytest.raises(DataError, match="already tokenized"):
        load_tokens(tmp_path / "t.bin", tokenizer=tmp_path / "tokenizer.json")


# ---------------------------------------------------------------------------------------------- tokenizer.json


def _word_level(tmp_path, vocab, bos: str | None = None) -> Path:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.processors import TemplateProcessing

    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    if bos is not None:  # a post-processor that would add a BOS token to every encoded chunk
        tok.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    path = tmp_path / "tok" / "tokenizer.json"
    path.parent.mkdir()
    tok.save(str(path))
    return path


def test_tokenizer_json_word_level_without_special_tokens(tmp_path):
    tj = _word_level(tmp_path, {"[UNK]": 0, "hello": 1, "world": 2, "qk": 3, "norm": 4, "[BOS]": 5}, bos="[BOS]")
    f = _write(tmp_path / "a.txt", "hello world qk norm\nhello qk zzz\n")
    td = load_tokens(f, tokenizer=tj, val_fraction=0.0)
    assert list(td.train) == [1, 2, 3, 4, 1, 3, 0]  # no [BOS] = 5
    assert td.vocab_size == 6 and td.train.dtype == np.uint16
    assert "tokenizer" in td.source
    # a directory holding tokenizer.json works too
    assert list(load_tokens(f, tokenizer=tj.parent, val_fraction=0.0).train) == [1, 2, 3, 4, 1, 3, 0]


def test_tokenizer_bpe_trained_offline_round_trips_text(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = "def norm(q, k):\n    return rms(q), rms(k)\n" * 20
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tj = tmp_path / "bpe.json"
    tok.save(str(tj))
    td = load_tokens(_write(tmp_path / "code.py", text), tokenizer=tj, val_fraction=0.0)
    assert tok.decode(list(map(int, td.train))) == text + "\n\n"
    assert td.vocab_size == tok.get_vocab_size(with_added_tokens=True)
    assert len(td.train) < len(text) / 2  # merges were used


def test_tokenizer_chunked_encoding_equals_whole_text(tmp_path, monkeypatch):
    words = ["[UNK]"] + [f"w{i}" for i in range(50)]
    tj = _word_level(tmp_path, {w: i for i, w in enumerate(words)})
    rng = np.random.default_rng(1)
    lines = [" ".join(f"w{j}" for j in rng.integers(0, 50, size=7)) for _ in range(40)]
    text = "\n".join(lines) + "\n"
    f = _write(tmp_path / "a.txt", text)
    whole = list(load_tokens(f, tokenizer=tj, val_fraction=0.0).train)
    monkeypatch.setattr(D_tok, "_ENCODE_CHUNK_CHARS", 50)
    assert len(D_tok._chunks_after_newlines(text)) > 10 and "".join(D_tok._chunks_after_newlines(text)) == text
    assert list(load_tokens(f, tokenizer=tj, val_fraction=0.0).train) == whole


def test_tokenizer_with_a_large_vocab_gives_uint32(tmp_path):
    vocab = {"[UNK]": 0, **{f"t{i}": i for i in range(1, 70_001)}}
    tj = _word_level(tmp_path, vocab)
    td = load_tokens(_write(tmp_path / "a.txt", "t1 t70000"), tokenizer=tj, val_fraction=0.0)
    assert td.train.dtype == np.uint32 and list(td.train) == [1, 70_000] and td.vocab_size == 70_001


def test_tokenizer_errors(tmp_path):
    f = _write(tmp_path / "a.txt", "hello")
    with pytest.raises(DataError, match=r"tokenizer .*missing\.json: file not found"):
        load_tokens(f, tokenizer=tmp_path / "missing.json")
    bad = _write(tmp_path / "tokenizer.json", "{not json")
    with pytest.raises(DataError, match=r"cannot read tokenizer .*tokenizer\.json: ") as e:
        load_tokens(f, tokenizer=bad)
    assert "\n" not in str(e.value)
    (tmp_path / "nodir").mkdir()
    with pytest.raises(DataError, match="is a directory without a tokenizer.json"):
        load_tokens(f, tokenizer=tmp_path / "nodir")


# ---------------------------------------------------------------------------------------------- batches


def _tokens(n=1000, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=n).astype(np.uint16)


def test_batch_shapes_shift_and_windows_come_from_the_offsets():
    tokens = _tokens()
    b = Batcher(tokens, batch_size=8, seq_len=16, seed=3)
    x, y = b.batch(5)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    for row, off in enumerate(b.global_offsets(5)):
        assert x[row].tolist() == tokens[off : off + 16].tolist()
        assert y[row].tolist() == tokens[off + 1 : off + 17].tolist()


def test_batch_is_a_pure_function_of_seed_and_step():
    tokens = _tokens()
    a = Batcher(tokens, batch_size=8, seq_len=16, seed=3)
    for s in range(5):
        a.batch(s)  # history must not matter
    fresh = Batcher(tokens, batch_size=8, seq_len=16, seed=3)
    assert torch.equal(a.batch(5)[0], fresh.batch(5)[0])
    assert not torch.equal(fresh.batch(5)[0], fresh.batch(6)[0])
    assert not torch.equal(fresh.batch(5)[0], Batcher(tokens, batch_size=8, seq_len=16, seed=4).batch(5)[0])


def test_offsets_reach_both_ends_and_never_run_past_the_end():
    tokens = np.arange(10, dtype=np.uint16)  # seq_len 8: offsets 0 or 1 only
    b = Batcher(tokens, batch_size=16, seq_len=8, seed=0)
    seen = set()
    for s in range(20):
        x, y = b.batch(s)
        seen |= set(x[:, 0].tolist())
        assert int(y.max()) <= 9
    assert seen == {0, 1}


@pytest.mark.parametrize("world_size", [1, 2, 4, 8])
def test_rank_batches_concatenate_to_the_single_process_batch(world_size):
    tokens = _tokens(5000)
    single = Batcher(tokens, batch_size=8, seq_len=32, seed=11)
    ranks = [Batcher(tokens, batch_size=8, seq_len=32, seed=11, rank=r, world_size=world_size) for r in range(world_size)]
    for step in (0, 1, 17, 1000):
        xs, ys = zip(*(r.batch(step) for r in ranks))
        assert all(x.shape == (8 // world_size, 32) for x in xs)
        gx, gy = single.batch(step)
        assert torch.equal(torch.cat(xs), gx) and torch.equal(torch.cat(ys), gy)
    sv = single.val_batches(3)
    rv = [r.val_batches(3) for r in ranks]
    for i in range(3):
        assert torch.equal(torch.cat([v[i][0] for v in rv]), sv[i][0])


def test_val_batches_fixed_and_spread_from_first_to_last_token():
    tokens = _tokens(500)
    b = Batcher(tokens, batch_size=4, seq_len=10, seed=0)
    v = b.val_batches(3)
    assert len(v) == 3 and all(x.shape == (4, 10) for x, _ in v)
    assert v[0][0][0].tolist() == tokens[:10].tolist()
    assert v[-1][1][-1].tolist() == tokens[-10:].tolist()
    starts = [int(np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(tokens, 10) == x.numpy(), axis=1))[0]) for xb, _ in v for x in xb]
    assert starts == sorted(starts) and len(set(starts)) == 12
    other = Batcher(tokens, batch_size=4, seq_len=10, seed=99).val_batches(3)
    assert all(torch.equal(a[0], c[0]) for a, c in zip(v, other))


def test_batches_from_a_memmap(tmp_path):
    np.arange(3000, dtype=np.uint16).tofile(tmp_path / "t.bin")
    td = load_tokens(tmp_path / "t.bin")
    x, y = Batcher(td.train, batch_size=4, seq_len=8, seed=0).batch(0)
    assert torch.equal(y - x, torch.ones_like(x))
    xv, _ = Batcher(td.val, batch_size=2, seq_len=8, seed=0).val_batches(1)[0]
    assert int(xv.min()) >= len(td.train)  # validation windows come only from the held-out tail
