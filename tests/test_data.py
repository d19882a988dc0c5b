"""Reading (line splitting, bad input named by file:line), encoding with a report, and batching: bounded
shapes, padding rows, one pass per epoch, resumable iterator."""

import dataclasses
import json

import numpy as np
import pytest

from seq2seq_jax.core.batching import Batch, BatchPolicy, eval_batches, padded_shapes, source_batches
from seq2seq_jax.core.config import DataConfig
from seq2seq_jax.core.encoding import Example, encode_pairs
from seq2seq_jax.core.reading import DataError, read_lines, read_parallel, read_tsv
from seq2seq_jax.core.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, VocabularyTokenizer
from seq2seq_jax.training.batch_iterator import BatchIterator

CHARS = VocabularyTokenizer.train("char", ["abcdefghijklmnopqrstuvwxyz "], min_freq=1, max_vocab_size=100)


def write(path, content: bytes):
    path.write_bytes(content)
    return path


def make_examples(count, seed=0, max_len=20):
    rng = np.random.default_rng(seed)
    return [Example(np.array(list(rng.integers(4, 30, rng.integers(1, max_len))) + [EOS_ID], dtype=np.int32),
                    np.array(rng.integers(4, 30, rng.integers(1, max_len)), dtype=np.int32))
            for _ in range(count)]


def batch_list(iterator, count):
    return [next(iterator) for _ in range(count)]


def assert_batches_equal(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        for field in Batch._fields:
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


# Reading ---------------------------------------------------------------------------------------------------

def test_lines_split_on_newline_only(tmp_path):
    path = write(tmp_path / "a.txt", "\ufeffone\r\ntwo\rstill two\u2028still two\n\nlast".encode())
    assert read_lines(path).lines == ["one", "two\rstill two\u2028still two", "", "last"]
    assert read_lines(write(tmp_path / "b.txt", b"x\ny\n")).lines == ["x", "y"]
    assert read_lines(write(tmp_path / "c.txt", b"\n")).lines == [""]
    assert read_lines(write(tmp_path / "d.txt", b"")).lines == []


def test_invalid_utf8_strict_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.src", b"fine\nalso fine\nbro\xffken\n")
    with pytest.raises(DataError, match=r"bad\.src:3: invalid UTF-8"):
        read_lines(path)
    lines = read_lines(path, encoding_errors="replace")
    assert lines.lines == ["fine", "also fine", "bro\ufffdken"]
    assert lines.replaced_line_numbers == [3] and lines.replaced_lines == 1


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.txt: file not found"):
        read_lines(tmp_path / "nowhere.txt")


def test_line_count_mismatch_names_both_files_before_decoding(tmp_path):
    src = write(tmp_path / "x.src", b"a\nb\nc\n")
    tgt = write(tmp_path / "x.tgt", b"a\n\xff\n")
    with pytest.raises(DataError, match=r"x\.src has 3 lines, .*x\.tgt has 2 lines"):
        read_parallel(src, tgt)


def test_parallel_pairs_keep_alignment_and_count_replacements(tmp_path):
    src = write(tmp_path / "x.src", b"a\xff\r\n" + "b\u2028\n".encode())
    tgt = write(tmp_path / "x.tgt", b"A\r\nB\xfe")
    pairs = read_parallel(src, tgt, encoding_errors="replace")
    assert pairs.pairs == [("a\ufffd", "A"), ("b\u2028", "B\ufffd")]
    assert pairs.replaced_lines == 2
    with pytest.raises(DataError, match=r"x\.src:1: invalid UTF-8"):
        read_parallel(src, tgt)


def test_tsv_needs_exactly_one_tab(tmp_path):
    pairs = read_tsv(write(tmp_path / "ok.tsv", b"a\tb\n\tempty source\n"))
    assert pairs.pairs == [("a", "b"), ("", "empty source")]
    with pytest.raises(DataError, match=r"two\.tsv:2: expected exactly one tab .* found 2"):
        read_tsv(write(tmp_path / "two.tsv", b"a\tb\na\tb\tc\n"))
    with pytest.raises(DataError, match=r"none\.tsv:1: .* found 0"):
        read_tsv(write(tmp_path / "none.tsv", b"no tab\n"))


# Encoding --------------------------------------------------------------------------------------------------

def test_encode_pairs_counts_every_decision():
    pairs = [("ab", "cd"), ("", "x"), ("x", " "[:0]), ("abcdef", "x"), ("a", "abcdef"), ("q!", "z")]
    config = DataConfig(max_src_len=4, max_tgt_len=4, long_pair_policy="drop")
    examples, report = encode_pairs(pairs, CHARS, CHARS, config, name="valid", replaced_lines=2)
    counts = (report.total, report.kept, report.dropped_empty, report.dropped_long, report.cropped)
    assert counts == (6, 2, 2, 2, 0)
    assert report.replaced_lines == 2 and report.kept_indices == [0, 5]
    assert (report.src_unk, report.src_tokens) == (1, 4)
    src, tgt = examples[0]
    assert src.dtype == np.int32 and tgt.dtype == np.int32
    assert src.tolist() == CHARS.encode("ab") + [EOS_ID] and tgt.tolist() == CHARS.encode("cd")
    assert examples[1].src.tolist() == CHARS.encode("q") + [UNK_ID, EOS_ID]
    summary = report.summary()
    assert summary.startswith("valid: 6 pairs, 2 kept") and "2 dropped (empty" in summary
    assert "2 lines with invalid UTF-8 replaced" in summary

    crop_config = dataclasses.replace(config, long_pair_policy="crop")
    cropped, crop_report = encode_pairs(pairs, CHARS, CHARS, crop_config)
    assert (crop_report.kept, crop_report.cropped, crop_report.dropped_long) == (4, 2, 0)
    assert [len(e.src) for e in cropped] == [3, 4, 2, 3] and [len(e.tgt) for e in cropped] == [2, 1, 3, 1]


def test_encode_pairs_takes_replaced_lines_from_read_parallel(tmp_path):
    src = write(tmp_path / "r.src", b"a\xff\nb\n")
    tgt = write(tmp_path / "r.tgt", b"a\nb\n")
    _, report = encode_pairs(read_parallel(src, tgt, "replace"), CHARS, CHARS, DataConfig())
    assert report.replaced_lines == 1 and report.kept == 2


# Batching --------------------------------------------------------------------------------------------------

def test_batch_layout_and_padding_rows():
    examples = [Example(np.array([5, 6, EOS_ID], np.int32), np.array([7, 8], np.int32)),
                Example(np.array([9, EOS_ID], np.int32), np.array([10], np.int32))]
    (batch,) = list(eval_batches(examples, BatchPolicy(batch_size=4, bucket_width=4)))
    assert batch.src.shape == (4, 4) and batch.tgt_in.shape == (4, 4) and batch.tgt_out.shape == (4, 4)
    assert batch.src.dtype == np.int32 and batch.index.dtype == np.int64
    row = int(np.flatnonzero(batch.index == 0)[0])
    assert batch.src[row].tolist() == [5, 6, EOS_ID, PAD_ID] and batch.src_len[row] == 3
    assert batch.tgt_in[row].tolist() == [BOS_ID, 7, 8, PAD_ID]
    assert batch.tgt_out[row].tolist() == [7, 8, EOS_ID, PAD_ID] and batch.tgt_len[row] == 3
    padding = batch.index == -1
    assert padding.sum() == 2
    assert (batch.src[padding, 0] == EOS_ID).all() and (batch.src[padding, 1:] == PAD_ID).all()
    assert (batch.src_len[padding] == 1).all() and (batch.tgt_len[padding] == 0).all()
    assert (batch.tgt_in[padding] == PAD_ID).all() and (batch.tgt_out[padding] == PAD_ID).all()


def test_every_epoch_gives_each_example_once_in_bounded_shapes():
    examples = make_examples(103)
    iterator = BatchIterator(examples, BatchPolicy(batch_size=8, bucket_width=4), seed=0)
    shapes = padded_shapes(examples, BatchPolicy(8, 4))
    assert iterator.padded_shapes() == shapes and len(shapes) < iterator.batches_per_epoch
    for epoch in range(3):
        assert (iterator.epoch, iterator.position) == (epoch, 0)
        seen = []
        for batch in batch_list(iterator, iterator.batches_per_epoch):
            assert batch.src.shape[0] == 8 and batch.src.shape[1] % 4 == 0 and batch.tgt_in.shape[1] % 4 == 0
            assert (batch.src.shape[1], batch.tgt_in.shape[1]) in shapes
            real = batch.index[batch.index >= 0]
            seen += real.tolist()
            for row, example_index in enumerate(batch.index):
                if example_index >= 0:
                    real_src = batch.src[row, : batch.src_len[row]]
                    assert real_src.tolist() == examples[example_index].src.tolist()
        assert sorted(seen) == list(range(len(examples)))


def test_epochs_are_shuffled_deterministically():
    examples = make_examples(60)
    first = BatchIterator(examples, BatchPolicy(8, 4), seed=3)
    epoch0 = [b.index.tolist() for b in batch_list(first, first.batches_per_epoch)]
    epoch1 = [b.index.tolist() for b in batch_list(first, first.batches_per_epoch)]
    assert epoch0 != epoch1
    again = BatchIterator(examples, BatchPolicy(8, 4), seed=3)
    assert [b.index.tolist() for b in batch_list(again, again.batches_per_epoch)] == epoch0
    other = BatchIterator(examples, BatchPolicy(8, 4), seed=4)
    assert [b.index.tolist() for b in batch_list(other, other.batches_per_epoch)] != epoch0


@pytest.mark.parametrize("taken", [0, 3, 9, 17])
def test_restore_continues_exactly(taken):
    examples = make_examples(50)
    uninterrupted = BatchIterator(examples, BatchPolicy(8, 4), seed=1)
    assert uninterrupted.batches_per_epoch < 17  # the last case crosses an epoch boundary
    batch_list(uninterrupted, taken)
    state = json.loads(json.dumps(uninterrupted.state()))
    expected = batch_list(uninterrupted, 12)

    resumed = BatchIterator(examples, BatchPolicy(8, 4), seed=1)
    resumed.restore(state)
    assert resumed.epoch == state["epoch"]
    assert_batches_equal(batch_list(resumed, 12), expected)


def test_targets_can_have_their_own_bucket_width():
    examples = make_examples(103)
    widths = DataConfig(bucket_width=8, tgt_bucket_width=2).bucket_widths
    assert widths == (8, 2) and DataConfig(bucket_width=8).bucket_widths == (8, 8)
    shapes = padded_shapes(examples, BatchPolicy(8, widths))
    assert all(src % 8 == 0 and tgt % 2 == 0 for src, tgt in shapes)
    assert any(tgt % 8 for _, tgt in shapes)  # would be a multiple of 8 with one width
    iterator = BatchIterator(examples, BatchPolicy(8, widths), seed=0)
    assert iterator.padded_shapes() == shapes
    for batch in batch_list(iterator, iterator.batches_per_epoch):
        assert (batch.src.shape[1], batch.tgt_in.shape[1]) in shapes
        assert batch.tgt_in.shape[1] - 2 < batch.tgt_len.max() <= batch.tgt_in.shape[1]
    batches = list(eval_batches(examples, BatchPolicy(8, widths)))
    assert {(b.src.shape[1], b.tgt_in.shape[1]) for b in batches} == shapes
    assert padded_shapes(examples, BatchPolicy(8, (4, 4))) == padded_shapes(examples, BatchPolicy(8, 4))


def test_restore_accepts_a_state_saved_with_one_width():
    examples = make_examples(50)
    state = BatchIterator(examples, BatchPolicy(8, 4), seed=1).state()
    state["bucket_width"] = 4  # how runs saved it before targets had their own width
    BatchIterator(examples, BatchPolicy(8, 4), seed=1).restore(state)
    with pytest.raises(DataError, match="bucket_width=4 .* bucket_width=\\[4, 2\\]"):
        BatchIterator(examples, BatchPolicy(8, (4, 2)), seed=1).restore(state)


def test_restore_rejects_different_data():
    state = BatchIterator(make_examples(50), BatchPolicy(8, 4), seed=1).state()
    with pytest.raises(DataError, match="num_examples=50 .* num_examples=49"):
        BatchIterator(make_examples(49), BatchPolicy(8, 4), seed=1).restore(state)


def test_no_examples_is_an_error():
    with pytest.raises(DataError, match="no training examples"):
        BatchIterator([], BatchPolicy(8, 4), seed=0)


def test_eval_batches_cover_every_example_once():
    examples = make_examples(37, seed=2)
    batches = list(eval_batches(examples, BatchPolicy(8, 4)))
    indices = np.concatenate([b.index for b in batches])
    assert sorted(indices[indices >= 0].tolist()) == list(range(37))
    assert {(b.src.shape[1], b.tgt_in.shape[1]) for b in batches} == padded_shapes(examples, BatchPolicy(8, 4))
    for batch in batches:
        for row, example_index in enumerate(batch.index):
            if example_index >= 0:
                n = len(examples[example_index].tgt)
                assert batch.tgt_out[row, :n].tolist() == examples[example_index].tgt.tolist()


def test_source_batches_keep_every_line_including_empty():
    sources = [[5, 6, 7], [], [8] * 9, [9], []]
    seen = {}
    for src, src_len, index in source_batches(sources, batch_size=2, bucket_width=4):
        assert src.shape[0] == 2 and src.shape[1] % 4 == 0 and src.dtype == np.int32
        for row, source_index in enumerate(index):
            if source_index < 0:
                assert src_len[row] == 1 and src[row, 0] == EOS_ID
                continue
            seen[int(source_index)] = src[row, : src_len[row]].tolist()
    assert seen == {i: ids + [EOS_ID] for i, ids in enumerate(sources)}
