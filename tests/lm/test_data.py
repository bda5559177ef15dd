import shutil

import pytest
import torch

from lm.data import EOS, Corpus, DataError, batchify, bptt_windows, build_vocab, find_ptb


def test_ptb_sizes_and_vocabulary(corpus):
    # the published token counts, one <eos> per line
    assert (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()) == (929_589, 73_760, 82_430)
    assert len(corpus.vocab) == 10_000 == len(set(corpus.vocab))
    assert EOS in corpus.vocab and "<unk>" in corpus.vocab
    # ids are by decreasing train frequency
    counts = torch.bincount(corpus.train, minlength=10_000)
    assert torch.all(counts[:-1] >= counts[1:])


def test_vocab_order_breaks_ties_alphabetically():
    assert build_vocab("b a c a b d".split()) == ["a", "b", "c", "d"]


def _copy_ptb(tmp_path):
    src = find_ptb()
    for split in ("train", "valid", "test"):
        shutil.copy(src / f"ptb.{split}.txt", tmp_path / f"ptb.{split}.txt")
    return tmp_path


def test_missing_files_say_how_to_get_the_data(tmp_path, corpus):
    with pytest.raises(DataError, match="does not hold ptb.train.txt"):
        Corpus.load(tmp_path)


def test_corrupt_file_is_detected(tmp_path, corpus):
    directory = _copy_ptb(tmp_path)
    with open(directory / "ptb.valid.txt", "a") as f:
        f.write(" extra words \n")
    with pytest.raises(DataError, match="ptb.valid.txt is corrupt"):
        Corpus.load(directory)


def test_data_dir_overrides_environment(tmp_path, monkeypatch, corpus):
    directory = _copy_ptb(tmp_path)
    monkeypatch.setenv("PTB_DIR", "/nonexistent")
    assert find_ptb(directory) == directory
    with pytest.raises(DataError, match="PTB_DIR=/nonexistent"):
        find_ptb()


def test_batchify_makes_contiguous_streams():
    stream = torch.arange(23)
    data = batchify(stream, 4)
    assert data.shape == (5, 4)
    for b in range(4):
        assert torch.equal(data[:, b], torch.arange(5 * b, 5 * b + 5))
    with pytest.raises(ValueError, match="too short"):
        batchify(torch.arange(5), 4)


def test_bptt_windows_cover_every_target_once():
    data = batchify(torch.arange(101), 2)  # (50, 2)
    windows = list(bptt_windows(data, 7))
    inputs = torch.cat([x for x, _ in windows])
    targets = torch.cat([y for _, y in windows])
    assert torch.equal(inputs, data[:-1]) and torch.equal(targets, data[1:])
    assert all(x.shape[0] <= 7 for x, _ in windows)


def test_a_relative_data_dir_is_returned_absolute(tmp_path, monkeypatch, corpus):
    source = find_ptb()
    monkeypatch.chdir(source.parent)
    monkeypatch.setenv("PTB_DIR", source.name)
    assert find_ptb() == source and find_ptb().is_absolute()


def test_download_into_the_cache_is_checked(tmp_path, monkeypatch, corpus):
    source = find_ptb()
    monkeypatch.delenv("PTB_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("lm.data.URL", source.as_uri() + "/ptb.{split}.txt")
    directory = find_ptb()
    assert directory == tmp_path / "cache" / "ttlayers" / "ptb"
    assert sorted(p.name for p in directory.iterdir()) == ["ptb.test.txt", "ptb.train.txt", "ptb.valid.txt"]
    assert find_ptb(allow_download=False) == directory  # cached: no second download


def test_a_bad_download_is_rejected(tmp_path, monkeypatch):
    bad = tmp_path / "ptb.train.txt"
    bad.write_text("not ptb\n")
    monkeypatch.delenv("PTB_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("lm.data.URL", bad.as_uri())
    with pytest.raises(DataError, match="does not match its published sha256"):
        find_ptb()
    assert not any((tmp_path / "cache" / "ttlayers" / "ptb").iterdir())  # nothing half-written is kept
    monkeypatch.setattr("lm.data.URL", (tmp_path / "missing.txt").as_uri())
    with pytest.raises(DataError, match="could not download PTB"):
        find_ptb()
