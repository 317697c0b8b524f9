"""Character-level text as fixed-length token sequences, from any UTF-8 text file.

Tokenisation: the vocabulary is the sorted set of characters of the file plus one padding
token (the last id), so a file fixes its vocabulary and a run that names the same file rebuilds
the same one. Training sequences are windows of ``seq_len`` characters at random offsets; a
file shorter than ``seq_len`` is right-padded with the padding token. The
:class:`TextDataModule` serves the non-overlapping windows (stride ``seq_len``) for runs that
stream data through Lightning.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import lightning.pytorch as pl
import torch

from distill.errors import DistillError

__all__ = ["CharText", "TextDataModule"]

PAD = "\u2400"  # shown for the padding token when decoding


class CharText:
    """A text file as character tokens: ``encode``/``decode``, ``vocab_size``, random ``windows``."""

    def __init__(self, path: str | Path, seq_len: int) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DistillError(f"text file {str(self.path)!r} does not exist; set modality_args.text_path to a UTF-8 text file")
        if seq_len < 1:
            raise DistillError(f"seq_len must be >= 1; got {seq_len}")
        self.seq_len = seq_len

    @cached_property
    def text(self) -> str:
        text = self.path.read_text(encoding="utf-8")
        if not text:
            raise DistillError(f"text file {str(self.path)!r} is empty")
        return text

    @cached_property
    def chars(self) -> list[str]:
        return sorted(set(self.text))

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1  # + padding

    @property
    def pad_id(self) -> int:
        return len(self.chars)

    @cached_property
    def ids(self) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.chars)}
        ids = torch.tensor([index[c] for c in self.text], dtype=torch.long)
        if ids.numel() < self.seq_len:
            ids = torch.cat([ids, torch.full((self.seq_len - ids.numel(),), self.pad_id, dtype=torch.long)])
        return ids

    def encode(self, text: str) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.chars)}
        missing = sorted({c for c in text if c not in index})
        if missing:
            raise DistillError(f"characters {missing} are not in the vocabulary of {str(self.path)!r}")
        return torch.tensor([index[c] for c in text], dtype=torch.long)

    def decode(self, x: torch.Tensor) -> list[str]:
        rows = x.long().reshape(-1, x.shape[-1]).tolist()
        return ["".join(self.chars[v] if 0 <= v < len(self.chars) else PAD for v in row) for row in rows]

    def windows(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` windows [n, seq_len] at uniformly random offsets."""
        starts = torch.randint(0, self.ids.numel() - self.seq_len + 1, (n,), generator=generator)
        return self.ids[starts[:, None] + torch.arange(self.seq_len)[None, :]]

    def chunks(self) -> torch.Tensor:
        """The non-overlapping windows [N, seq_len] (stride seq_len; the tail shorter than one is dropped)."""
        n = self.ids.numel() // self.seq_len
        return self.ids[: n * self.seq_len].reshape(n, self.seq_len)


class TextDataModule(pl.LightningDataModule):
    """A LightningDataModule over ``text.chunks()``: batches of Long [batch_size, seq_len]."""

    def __init__(self, text: CharText, batch_size: int, shuffle: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.text, self.batch_size, self.shuffle, self.seed = text, batch_size, shuffle, seed

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.text.chunks()), batch_size=self.batch_size,
                                           shuffle=self.shuffle, generator=generator)
