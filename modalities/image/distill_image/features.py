"""A small digits classifier whose penultimate layer is the image modality's feature space.

Fréchet-style metrics (FD, KID, precision/recall/coverage) compare two sets of
images through a fixed feature network. Inception-v3 (Heusel et al. 2017) is the
convention for natural photos, but it cannot be downloaded here and is meaningless
on 16x16 digits, so -- as in the MNIST evaluations of e.g. Bińkowski et al. 2018
("Demystifying MMD GANs", which used a LeNet's features) -- the image modality
bundles a small CNN trained on the 1,797 scikit-learn digits
(``python -m distill_image.train_features``) and measures distances in its
penultimate features.

Architecture (``[B, 1, 16, 16]`` in ``[-1, 1]``)::

    block(c_in, c) = Conv3x3 -> GroupNorm -> SiLU -> Conv3x3 -> GroupNorm -> SiLU
    16x16  block(1, w1)  -> AvgPool2   8x8
           block(w1, w2) -> AvgPool2   4x4
           block(w2, w3) -> global average pool   [B, w3]
    features = SiLU(Linear(w3, feature_dim))      [B, feature_dim]   <- the feature space
    logits   = Linear(feature_dim, num_classes)   (dropout before it while training)

:func:`load_digits_classifier` loads the bundled weights (safetensors, no
unpickling) from ``distill_image/assets`` once per process and returns the same
frozen module in eval mode on every call.
"""
from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from distill.errors import DistillError

__all__ = [
    "ASSETS_DIR",
    "CLASSIFIER_FILE",
    "ClassifierFeatures",
    "DigitsClassifier",
    "load_digits_classifier",
]

#: Folder holding the bundled weights (package data of distill-plugin-image).
ASSETS_DIR = Path(__file__).resolve().parent / "assets"
#: Bundled weights; the JSON sidecar with the same stem holds config and provenance.
CLASSIFIER_FILE = ASSETS_DIR / "digits_classifier.safetensors"

RETRAIN_HINT = "python -m distill_image.train_features"


def _block(c_in: int, c_out: int, groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.GroupNorm(min(groups, c_out), c_out),
        nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.GroupNorm(min(groups, c_out), c_out),
        nn.SiLU(),
    )


class DigitsClassifier(nn.Module):
    """Three conv blocks, global pooling, a ``feature_dim`` feature layer and 10-way logits.

    ``forward(x) -> logits [B, num_classes]``; :meth:`features` gives the
    penultimate features ``[B, feature_dim]`` (float32) used by the metrics.
    ``config`` holds the constructor arguments (JSON-able), so a checkpoint rebuilds
    the network with ``DigitsClassifier(**config)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: tuple[int, ...] | list[int] = (16, 32, 64),
        feature_dim: int = 128,
        num_classes: int = 10,
        resolution: int = 16,
        groups: int = 8,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1 or feature_dim < 1 or num_classes < 2:
            raise DistillError(
                "DigitsClassifier needs three positive conv widths, feature_dim >= 1 and num_classes >= 2; "
                f"got widths={widths}, feature_dim={feature_dim}, num_classes={num_classes}"
            )
        if resolution % 4 != 0:
            raise DistillError(f"DigitsClassifier pools twice by 2, so resolution must be a multiple of 4, got {resolution}")
        self.config: dict[str, Any] = {
            "in_channels": int(in_channels),
            "widths": list(widths),
            "feature_dim": int(feature_dim),
            "num_classes": int(num_classes),
            "resolution": int(resolution),
            "groups": int(groups),
            "dropout": float(dropout),
        }
        self.in_channels = int(in_channels)
        self.resolution = int(resolution)
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)
        w1, w2, w3 = widths
        self.body = nn.Sequential(
            _block(in_channels, w1, groups),
            nn.AvgPool2d(2),
            _block(w1, w2, groups),
            nn.AvgPool2d(2),
            _block(w2, w3, groups),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.proj = nn.Linear(w3, feature_dim)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, self.resolution, self.resolution)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise DistillError(
                f"DigitsClassifier expects images [B, {expected[0]}, {expected[1]}, {expected[2]}] in [-1, 1], "
                f"got shape {tuple(x.shape)}"
            )
        p = next(self.parameters())
        return x.to(device=p.device, dtype=p.dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``SiLU(Linear(pool(conv(x))))``: float32 ``[B, feature_dim]``."""
        x = self._check(x)
        return self.act(self.proj(self.body(x))).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, num_classes]``."""
        return self.head(self.dropout(self.features(x)))


class ClassifierFeatures(nn.Module):
    """Adapter that lets torchmetrics' FID/KID use the digits classifier as ``feature``.

    torchmetrics (1.x) calls ``feature(imgs)`` on exactly what is passed to
    ``update`` when ``feature`` is an ``nn.Module`` (``normalize`` only applies to its
    own Inception network), and reads ``num_features`` to size its state (without
    it, it would probe the module with a uint8 ``[1, 3, 299, 299]`` image). This
    adapter accepts

    * float images ``[B, 1, H, W]`` in ``[-1, 1]`` (the modality's convention),
    * uint8 images in ``[0, 255]`` (mapped to ``[-1, 1]``),
    * 3-channel images (averaged to grey),
    * other resolutions (bilinear resize to the classifier's resolution),

    and returns float32 features ``[B, feature_dim]`` computed without gradients in
    batches of ``batch_size`` on the classifier's device.

    :meth:`remember` precomputes the features of given tensors so that several
    metrics (FD, KID, precision/recall) fed the same tensor objects run the
    network once per set.
    """

    def __init__(self, classifier: DigitsClassifier, batch_size: int = 1024) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = int(classifier.feature_dim)
        self.batch_size = int(batch_size)
        self._memo: list[tuple[torch.Tensor, int, torch.Tensor]] = []

    @contextlib.contextmanager
    def remember(self, *batches: torch.Tensor) -> Iterator[list[torch.Tensor]]:
        """Within the block, calls on exactly these tensor objects return their precomputed features.

        A hit needs the very same object, unmodified since (its in-place version
        counter is checked); the memo holds references, so ids cannot be reused, and
        it is dropped when the block exits. Yields the features of ``batches``.
        """
        saved = self._memo
        self._memo = []
        memo = [(b, b._version, self(b)) for b in batches]
        self._memo = saved + memo
        try:
            yield [f for _, _, f in memo]
        finally:
            self._memo = saved

    def train(self, mode: bool = True) -> "ClassifierFeatures":
        """The wrapped classifier always stays in eval mode (no dropout, frozen)."""
        return super().train(False)

    def prepare(self, imgs: torch.Tensor) -> torch.Tensor:
        """Map what torchmetrics or a caller passes to float ``[B, C, R, R]`` in ``[-1, 1]``."""
        imgs = torch.as_tensor(imgs)
        if imgs.ndim == 3:
            imgs = imgs.unsqueeze(1)
        if imgs.ndim != 4:
            raise DistillError(f"image features need a batch [B, C, H, W], got shape {tuple(imgs.shape)}")
        if imgs.dtype == torch.uint8:
            imgs = imgs.float() / 127.5 - 1.0
        else:
            imgs = imgs.float()
        c_in = self.classifier.in_channels
        if imgs.shape[1] != c_in:
            if c_in == 1:
                imgs = imgs.mean(dim=1, keepdim=True)
            else:
                raise DistillError(f"the classifier takes {c_in} channels, got images with {imgs.shape[1]}")
        r = self.classifier.resolution
        if imgs.shape[-2:] != (r, r):
            imgs = nn.functional.interpolate(imgs, size=(r, r), mode="bilinear", align_corners=False, antialias=True)
        return imgs

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        for seen, version, feats in self._memo:
            if imgs is seen and imgs._version == version:
                return feats.clone()
        imgs = self.prepare(imgs)
        out_device = imgs.device
        if imgs.shape[0] == 0:
            return torch.zeros(0, self.num_features, device=out_device)
        chunks = [self.classifier.features(imgs[i:i + self.batch_size]) for i in range(0, imgs.shape[0], self.batch_size)]
        return torch.cat(chunks).to(out_device)


def _read_sidecar(path: Path) -> dict[str, Any]:
    sidecar = path.with_suffix(".json")
    if not sidecar.exists():
        raise DistillError(
            f"the digits classifier at {path} has no JSON sidecar ({sidecar.name}) with its config; "
            f"retrain it with `{RETRAIN_HINT} --out {path.parent}`"
        )
    try:
        return json.loads(sidecar.read_text())
    except json.JSONDecodeError as exc:
        raise DistillError(f"cannot read {sidecar}: {exc}; retrain with `{RETRAIN_HINT} --out {path.parent}`") from exc


@functools.lru_cache(maxsize=8)
def _load_cached(path_str: str, device_str: str) -> DigitsClassifier:
    from safetensors.torch import load_file

    path = Path(path_str)
    meta = _read_sidecar(path)
    config = meta.get("config")
    if not isinstance(config, dict):
        raise DistillError(f"{path.with_suffix('.json')} has no 'config' object; retrain with `{RETRAIN_HINT}`")
    try:
        model = DigitsClassifier(**config)
    except TypeError as exc:
        raise DistillError(
            f"{path.with_suffix('.json')} has a config this version cannot build ({exc}); retrain with `{RETRAIN_HINT}`"
        ) from exc
    state = load_file(str(path), device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DistillError(
            f"{path} does not match DigitsClassifier({config}): missing {sorted(missing)}, unexpected "
            f"{sorted(unexpected)}; retrain with `{RETRAIN_HINT} --out {path.parent}`"
        )
    model.eval().requires_grad_(False)
    return model.to(torch.device(device_str))


def load_digits_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> DigitsClassifier:
    """The bundled digits classifier (frozen, eval mode), loaded once per (path, device).

    ``path`` defaults to :data:`CLASSIFIER_FILE`; its config comes from the JSON
    sidecar next to it. The returned module is cached and shared: do not train or
    move it in place (ask for another ``device`` instead).
    """
    path = Path(path) if path is not None else CLASSIFIER_FILE
    if not path.exists():
        raise DistillError(
            f"digits classifier weights not found at {path}; the image modality's feature metrics need them. "
            f"Retrain them (a minute or two on a CPU) with `{RETRAIN_HINT} --out {path.parent}`, "
            "or reinstall distill-plugin-image with its package data (assets/*)"
        )
    return _load_cached(str(path.resolve()), str(torch.device(device)))
