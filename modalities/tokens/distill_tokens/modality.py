"""The ``tokens`` modality: fixed-length token sequences over a vocabulary (kind ``discrete``).

A sample in model space is Long ``[L]`` with tokens in ``[0, vocab_size)``; the masked process
adds the mask token ``vocab_size``. Tasks (``modality_args.task``):

* ``arithmetic`` (default): three zero-padded equations ``aa+bb=ccc;`` (30 characters, 13
  symbols); exact validity, NLL and entropy (:mod:`distill_tokens.languages`);
* ``chain``: integer tokens where every non-zero token fixes its predecessor
  (``x[j-1] = x[j] // 4``), V = 64, L = 32 by default;
* ``text``: character-level windows of ``seq_len`` characters of any UTF-8 file
  (``text_path``), vocabulary = the file's characters + a padding token.

Unconditional. The reference network is :class:`distill.nets.TokenTransformerNet`; the bundled
teachers are MDLM masked-diffusion models (``assets/<task>_teacher.safetensors``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from distill import DataBatch, Modality
from distill.errors import DistillError

from distill_tokens.languages import Language, make_language

ASSETS = Path(__file__).resolve().parent / "assets"
TASKS = ("arithmetic", "chain", "text")


def teacher_file(task: str) -> Path:
    return ASSETS / f"{task}_teacher.safetensors"


class TokensModality(Modality):
    name = "tokens"
    kind = "discrete"
    description = "fixed-length token sequences: arithmetic and dependency-chain languages (exact validity), character-level text"

    @dataclass
    class Options:
        task: str = "arithmetic"  # arithmetic | chain | text
        text_path: str | None = None  # task=text: a UTF-8 text file
        seq_len: int = 64  # task=text: characters per sequence
        chain_vocab: int = 64  # task=chain: V
        chain_length: int = 32  # task=chain: L
        network_args: dict[str, Any] = field(default_factory=dict)  # TokenTransformerNet overrides

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        o = self.options
        if o.task not in TASKS:
            raise DistillError(f"modality_args.task must be one of {', '.join(TASKS)}; got {o.task!r}")
        if o.task == "text" and not o.text_path:
            raise DistillError("modality_args.task=text needs modality_args.text_path=<a UTF-8 text file>")

    # --- the data ------------------------------------------------------------------
    @cached_property
    def language(self) -> Language | None:
        """The generated language of the task (None for text)."""
        o = self.options
        if o.task == "arithmetic":
            return make_language("arithmetic")
        if o.task == "chain":
            return make_language("chain", vocab=o.chain_vocab, length=o.chain_length)
        return None

    @cached_property
    def text(self):
        from distill_tokens.text import CharText

        return CharText(self.options.text_path, self.options.seq_len) if self.options.task == "text" else None

    @property
    def vocab_size(self) -> int:
        return self.language.vocab_size if self.language is not None else self.text.vocab_size

    @property
    def seq_len(self) -> int:
        return self.language.seq_len if self.language is not None else self.options.seq_len

    @property
    def sample_shape(self) -> tuple[int]:
        return (self.seq_len,)

    def sample_data(self, n: int, generator: torch.Generator | None = None, device: Any = None) -> DataBatch:
        x = self.language.sample(n, generator) if self.language is not None else self.text.windows(n, generator)
        return DataBatch(x.to(device) if device is not None else x)

    def datamodule(self, batch_size: int) -> Any:
        if self.text is not None:
            from distill_tokens.text import TextDataModule

            return TextDataModule(self.text, batch_size)
        raise DistillError(f"the {self.options.task} language is generated in memory (sample_data); it has no datamodule")

    def decode_text(self, x: torch.Tensor) -> list[str]:
        x = x.round().long() if x.is_floating_point() else x.long()
        return self.language.decode(x.cpu()) if self.language is not None else self.text.decode(x.cpu())

    # --- networks --------------------------------------------------------------------
    def build_network(self, role: str, **overrides: Any) -> nn.Module:
        """``TokenTransformerNet(vocab_size=V, seq_len=L, **network_args, **overrides)`` (later keys win)."""
        from distill.nets.token_transformer import TokenTransformerNet

        kwargs = {"vocab_size": self.vocab_size, "seq_len": self.seq_len, **dict(self.options.network_args), **overrides}
        return TokenTransformerNet(**kwargs)

    def default_teacher(self) -> dict[str, Any]:
        task = self.options.task
        path = teacher_file(task)
        if task == "text" or not path.is_file():
            raise DistillError(
                f"the tokens modality bundles teachers for the arithmetic and chain languages only (task={task!r}, "
                f"{str(path)!r} not installed). Train one with `distill train configs/tokens/arithmetic_teacher.yaml "
                "modality_args.task=...` and set teacher.loader=safetensors teacher.path=<run dir>/student_ema.safetensors"
            )
        if task == "chain" and (self.options.chain_vocab, self.options.chain_length) != (64, 32):
            raise DistillError("the bundled chain teacher is for chain_vocab=64, chain_length=32; train your own for other sizes")
        return {"loader": "safetensors", "path": str(path)}

    # --- benchmark -----------------------------------------------------------------------
    @classmethod
    def run_benchmark(cls, **kwargs: Any) -> dict[str, Any]:
        """``distill bench tokens``: both languages, teacher rows and discrete methods (:mod:`distill_tokens.bench`)."""
        from distill_tokens.bench import run_benchmark

        return run_benchmark(**kwargs)

    # --- evaluation and output -------------------------------------------------------------
    def evaluate(self, samples: torch.Tensor, reference: Any = None, **context: Any) -> dict[str, Any]:
        """validity, nll, coverage_kl, distinct, entropy (:func:`distill_tokens.metrics.token_metrics`);
        for text only distinct and entropy."""
        from distill_tokens.metrics import distinct_ratio, token_metrics, unigram_entropy

        if self.language is not None:
            return token_metrics(self.language, samples)
        x = samples.round().long() if samples.is_floating_point() else samples.long()
        return {"distinct": distinct_ratio(x), "entropy": unigram_entropy(x, self.vocab_size)}

    def diversity(self, samples: torch.Tensor) -> float:
        """The distinct-sample ratio (what the collapse alarm compares with the teacher's)."""
        from distill_tokens.metrics import distinct_ratio

        return distinct_ratio(samples.round().long() if samples.is_floating_point() else samples)

    def _lines(self, samples: torch.Tensor, limit: int) -> list[str]:
        x = samples[:limit]
        texts = self.decode_text(x)
        if self.language is None:
            return texts
        ok = self.language.valid(x.round().long() if x.is_floating_point() else x)
        return [f"{'ok ' if v else 'BAD'} {t}" for t, v in zip(texts, ok.tolist())]

    def save_samples(self, samples: torch.Tensor, path: Path | str, title: str | None = None, limit: int = 64,
                     **context: Any) -> list[Path]:
        """The first ``limit`` samples decoded, one per line (``ok``/``BAD`` = valid or not), as ``<path>.txt``."""
        target = Path(path).with_suffix(".txt")
        target.parent.mkdir(parents=True, exist_ok=True)
        head = [f"# {title}"] if title else []
        metrics = self.evaluate(samples) if self.language is not None else {}
        if metrics:
            head.append("# " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
        target.write_text("\n".join(head + self._lines(samples, limit)) + "\n", encoding="utf-8")
        return [target]

    def save_comparison(self, panels: Mapping[str, torch.Tensor], path: Path | str, cond: Any = None,
                        title: str | None = None, limit: int = 16, **context: Any) -> list[Path]:
        """Each panel's first ``limit`` samples under its label, in one text file ``<path>.txt``."""
        target = Path(path).with_suffix(".txt")
        target.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"# {title}"] if title else []
        for label, samples in panels.items():
            metrics = self.evaluate(samples) if self.language is not None else {}
            summary = ", ".join(f"{k}={v:.3g}" for k, v in metrics.items() if isinstance(v, float))
            lines += [f"## {label}" + (f" ({summary})" if summary else "")] + self._lines(samples, limit) + [""]
        target.write_text("\n".join(lines), encoding="utf-8")
        return [target]
