"""Character-level text data: vocabulary, encode/decode, windows, padding and the data module."""
from __future__ import annotations

import pytest
import torch

from distill.errors import DistillError
from distill_tokens.modality import TokensModality
from distill_tokens.text import CharText, TextDataModule


def test_vocabulary_windows_and_round_trip(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcab\nba", encoding="utf-8")
    text = CharText(path, seq_len=4)
    assert text.chars == ["\n", "a", "b", "c"] and text.vocab_size == 5 and text.pad_id == 4
    assert text.decode(text.encode("cab\n")[None]) == ["cab\n"]
    w = text.windows(50, torch.Generator().manual_seed(0))
    assert w.shape == (50, 4)
    joined = "abcab\nba"
    assert all(s in joined for s in text.decode(w))  # every window is a substring of the file
    assert text.chunks().tolist() == [text.encode("abca").tolist(), text.encode("b\nba").tolist()]
    with pytest.raises(DistillError, match="not in the vocabulary"):
        text.encode("xyz")


def test_short_files_are_padded(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("hi", encoding="utf-8")
    text = CharText(path, seq_len=5)
    assert text.windows(1)[0].tolist() == [0, 1, 2, 2, 2]
    assert text.decode(text.windows(1)) == ["hi\u2400\u2400\u2400"]


def test_data_module_batches(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("0123456789" * 8, encoding="utf-8")
    dm = TextDataModule(CharText(path, 8), batch_size=4)
    (batch,) = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 8) and batch.dtype == torch.long


def test_text_task_of_the_modality(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("hello world " * 20, encoding="utf-8")
    m = TokensModality({"task": "text", "text_path": str(path), "seq_len": 16})
    assert m.vocab_size == len(set("hello world ")) + 1 and m.sample_shape == (16,)
    x = m.sample_data(8, torch.Generator().manual_seed(0)).x0
    assert x.shape == (8, 16)
    assert set(m.evaluate(x)) == {"distinct", "entropy"}
    assert m.datamodule(4).batch_size == 4
    with pytest.raises(DistillError, match="text_path"):
        TokensModality({"task": "text"})
