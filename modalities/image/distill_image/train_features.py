"""Train the bundled digits classifier (the image modality's feature network).

    python -m distill_image.train_features [--out DIR] [--epochs N] [--seed S]

Data: the 1,797 scikit-learn digits (8x8, values 0..16) upsampled to 16x16 with
bilinear interpolation and scaled to ``[-1, 1]``. A stratified split (``--holdout``
of each class, drawn with ``--seed``) is held out to report accuracy; the rest is
trained on with light augmentation -- a random shift of up to one pixel in each
direction (background-filled, not wrapped) and Gaussian noise of a random standard
deviation in ``[0, --noise]`` -- with AdamW and a cosine learning-rate schedule.

Everything is seeded and runs single-threaded by default (``--threads 1``), so the
same command on the same software stack writes a byte-identical weights file. Outputs, in
``--out`` (default: the package's ``assets/`` folder):

* ``digits_classifier.safetensors`` -- the weights (float32, about 0.3 MB);
* ``digits_classifier.json`` -- config, seed, epochs, optimiser settings, held-out
  indices and accuracy, train accuracy, versions and the command that made it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from distill.errors import DistillError
from distill_image.features import ASSETS_DIR, CLASSIFIER_FILE, DigitsClassifier

__all__ = ["digits_source", "load_digits", "holdout_split", "shift_augment", "train_classifier", "main"]


def _load_digits_sklearn(resolution: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DistillError(
            "the digits data ship with scikit-learn, which is not installed; "
            "`pip install scikit-learn` (see requirements.txt for the pinned version)"
        ) from exc
    bunch = sk_load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1)  # [N, 1, 8, 8], 0..16
    if resolution != 8:
        x = nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    x = x / 16.0 * 2.0 - 1.0
    return x.clamp(-1.0, 1.0).contiguous(), torch.as_tensor(bunch.target, dtype=torch.long)


def load_digits(resolution: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits as ``(images [1797, 1, R, R] in [-1, 1], labels Long [1797])``.

    Uses the modality's loader (``distill_image.data.load_digits_tensor``) when it is
    available, else the same recipe locally (bilinear 8 -> R, ``x / 16 * 2 - 1``).
    """
    try:
        from distill_image.data import load_digits_tensor
    except ImportError:
        return _load_digits_sklearn(resolution)
    images, labels = load_digits_tensor(resolution=resolution)
    return images.float(), torch.as_tensor(labels, dtype=torch.long)


def digits_source() -> str:
    """Which loader :func:`load_digits` uses (recorded in the sidecar)."""
    try:
        from distill_image.data import load_digits_tensor  # noqa: F401
    except ImportError:
        return "distill_image.train_features._load_digits_sklearn"
    return "distill_image.data.load_digits_tensor"


def holdout_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified split: ``round(fraction * n_c)`` random indices of each class are held out.

    Returns ``(train_idx, heldout_idx)``, both sorted Long tensors; a pure function of
    ``(labels, fraction, seed)``.
    """
    if not 0.0 < fraction < 1.0:
        raise DistillError(f"the held-out fraction must be in (0, 1), got {fraction}")
    g = torch.Generator().manual_seed(int(seed))
    held = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        perm = idx[torch.randperm(idx.numel(), generator=g)]
        held.append(perm[: max(1, round(fraction * idx.numel()))])
    heldout = torch.sort(torch.cat(held)).values
    mask = torch.ones(labels.numel(), dtype=torch.bool)
    mask[heldout] = False
    return torch.nonzero(mask).flatten(), heldout


def shift_augment(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1, fill: float = -1.0) -> torch.Tensor:
    """Shift each image by an integer offset in ``[-max_shift, max_shift]^2``, filling with background.

    The images are padded with ``fill`` (-1 = black background) and a window is cropped
    at a random offset per image, so nothing wraps around.
    """
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    s = max_shift
    padded = nn.functional.pad(x, (s, s, s, s), value=fill)
    offsets = torch.randint(0, 2 * s + 1, (b, 2), generator=generator)
    out = torch.empty_like(x)
    for dy in range(2 * s + 1):
        for dx in range(2 * s + 1):
            sel = (offsets[:, 0] == dy) & (offsets[:, 1] == dx)
            if sel.any():
                out[sel] = padded[sel, :, dy:dy + h, dx:dx + w]
    return out


@torch.no_grad()
def accuracy(model: DigitsClassifier, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (switched to eval mode) on ``(x, y)``."""
    was_training = model.training
    model.eval()
    preds = torch.cat([model(x[i:i + batch_size]).argmax(dim=1) for i in range(0, x.shape[0], batch_size)])
    model.train(was_training)
    return float((preds == y).float().mean())


def train_classifier(
    epochs: int = 40,
    seed: int = 0,
    holdout: float = 0.2,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    noise: float = 0.1,
    max_shift: int = 1,
    label_smoothing: float = 0.05,
    config: dict[str, Any] | None = None,
    log: bool = True,
) -> tuple[DigitsClassifier, dict[str, Any]]:
    """Train a :class:`DigitsClassifier`; returns the eval-mode model and a summary dict."""
    if epochs < 1:
        raise DistillError(f"--epochs must be at least 1, got {epochs}")
    torch.manual_seed(seed)
    x, y = load_digits(resolution=(config or {}).get("resolution", 16))
    train_idx, held_idx = holdout_split(y, holdout, seed)
    xtr, ytr = x[train_idx], y[train_idx]
    xho, yho = x[held_idx], y[held_idx]

    model = DigitsClassifier(**(config or {}))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(xtr.shape[0] / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total)))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    g = torch.Generator().manual_seed(seed + 1)
    t0 = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(xtr.shape[0], generator=g)
        running = 0.0
        for i in range(0, xtr.shape[0], batch_size):
            idx = perm[i:i + batch_size]
            xb = shift_augment(xtr[idx], g, max_shift=max_shift)
            if noise > 0:
                std = torch.rand(xb.shape[0], 1, 1, 1, generator=g) * noise
                xb = xb + std * torch.randn(xb.shape, generator=g)
            loss = loss_fn(model(xb), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += float(loss.detach()) * idx.numel()
        if log and (epoch == 0 or (epoch + 1) % 5 == 0 or epoch + 1 == epochs):
            print(
                f"epoch {epoch + 1:3d}/{epochs}  loss {running / xtr.shape[0]:.4f}  "
                f"held-out acc {accuracy(model, xho, yho):.4f}  ({time.perf_counter() - t0:.1f}s)",
                flush=True,
            )
    model.eval()
    summary = {
        "heldout_accuracy": accuracy(model, xho, yho),
        "train_accuracy": accuracy(model, xtr, ytr),
        "heldout_fraction": holdout,
        "heldout_size": int(held_idx.numel()),
        "train_size": int(train_idx.numel()),
        "heldout_indices": held_idx.tolist(),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "optimizer": {
            "name": "AdamW",
            "lr": lr,
            "weight_decay": weight_decay,
            "schedule": "cosine",
            "batch_size": batch_size,
            "label_smoothing": label_smoothing,
        },
        "augmentation": {"max_shift_px": max_shift, "noise_std_max": noise},
    }
    return model, summary


def save_classifier(model: DigitsClassifier, meta: dict[str, Any], out_dir: Path) -> Path:
    """Write ``digits_classifier.safetensors`` and its JSON sidecar atomically into ``out_dir``."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CLASSIFIER_FILE.name
    tmp = path.with_suffix(".safetensors.tmp")
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    # One metadata key only: safetensors writes several in a random order, and the file
    # should be byte-identical across runs (the config lives in the sidecar).
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)  # readable like any package data file
    os.replace(tmp, path)
    side = path.with_suffix(".json")
    tmp_side = side.with_suffix(".json.tmp")
    tmp_side.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp_side, side)
    return path


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "torch": torch.__version__}
    try:
        import sklearn

        out["scikit-learn"] = sklearn.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill_image.train_features", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ASSETS_DIR, help="output folder (default: the package's assets/)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=float, default=0.2, help="held-out fraction of each class")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--noise", type=float, default=0.1, help="max std of the Gaussian noise augmentation")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 = bit-reproducible)")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    model, summary = train_classifier(
        epochs=args.epochs, seed=args.seed, holdout=args.holdout, batch_size=args.batch_size, lr=args.lr, noise=args.noise
    )
    command = "python -m distill_image.train_features " + " ".join(
        shlex.quote(a) for a in (list(argv) if argv is not None else sys.argv[1:])
    )
    meta = {
        "model": "DigitsClassifier",
        "config": model.config,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "data": "sklearn.datasets.load_digits, bilinear 8->16 (align_corners=False), x/16*2-1",
        "data_loader": digits_source(),
        "seed": args.seed,
        "epochs": args.epochs,
        "threads": args.threads,
        **summary,
        "command": command.strip(),
        "versions": _versions(),
    }
    meta["heldout_indices"] = meta.pop("heldout_indices")  # the long list last
    path = save_classifier(model, meta, args.out)
    print(
        f"held-out accuracy {summary['heldout_accuracy']:.4f} on {summary['heldout_size']} digits; "
        f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) and {path.with_suffix('.json').name}"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
