"""Image metrics in the bundled digits classifier's feature space.

:func:`image_metrics` compares generated images ``[N, 1, 16, 16]`` in ``[-1, 1]``
with the real digits and returns a flat ``dict[str, float]``:

* ``fd`` -- Fréchet distance between Gaussians fitted to the features (Heusel,
  Ramsauer, Unterthiner, Nessler & Hochreiter 2017, "GANs trained by a two
  time-scale update rule converge to a local Nash equilibrium", NeurIPS;
  the Fréchet/Wasserstein-2 distance of two Gaussians is Dowson & Landau 1982),
  computed by torchmetrics' ``FrechetInceptionDistance`` with the digits
  classifier as its ``feature`` module;
* ``kid``, ``kid_std`` -- kernel inception distance (Bińkowski, Sutherland, Arbel
  & Gretton 2018, "Demystifying MMD GANs", ICLR, with their cubic polynomial
  kernel ``k(a, b) = (a.b / F + 1)^3``): unbiased MMD^2, mean and std over random subsets, torchmetrics'
  ``KernelInceptionDistance`` with the same feature module;
* ``precision``, ``recall`` -- improved precision and recall (Kynkäänniemi,
  Karras, Laine, Lehtinen & Aila 2019, "Improved precision and recall metric for
  assessing generative models", NeurIPS), k-NN manifolds with k = 3;
* ``coverage``, ``density`` -- Naeem, Oh, Uh, Choi & Yoo 2020, "Reliable fidelity
  and diversity metrics for generative models", ICML;
* ``class_accuracy`` (when ``cond`` labels are given) -- the fraction of samples
  the classifier assigns to the requested class;
* ``paired_psnr`` (when ``teacher_samples`` are given) -- PSNR between each sample
  and the teacher's sample from the same noise.

All sample-set metrics have a *sampling floor*: two disjoint halves of the real
digits do not score FD = 0 or precision = 1. Compare a generator against that floor
at the same sample sizes. Results are deterministic (KID's subsets are drawn from
a generator seeded with ``seed``).
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from distill.errors import DistillError
from distill.modality import DataBatch
from distill_image.features import ClassifierFeatures, DigitsClassifier, load_digits_classifier

__all__ = [
    "PSNR_CAP_DB",
    "class_accuracy",
    "coverage_density",
    "fd_features",
    "feature_fd",
    "frechet_distance",
    "gaussian_stats",
    "image_metrics",
    "kth_nn_radii",
    "paired_psnr",
    "precision_recall",
]

#: Upper bound of :func:`paired_psnr` in dB: a pair closer than this (MSE below
#: ``4 * 10**-10`` for data range 2) counts as identical, so the mean stays finite.
PSNR_CAP_DB = 100.0


def _images(name: str, x: Any) -> torch.Tensor:
    if isinstance(x, DataBatch):
        x = x.x0
    if not isinstance(x, torch.Tensor):
        raise DistillError(f"{name} must be an image tensor [N, 1, 16, 16] or a DataBatch, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[0] == 0:
        raise DistillError(f"{name} must be a non-empty batch of images [N, C, H, W], got shape {tuple(x.shape)}")
    x = x.detach().float().cpu()
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).flatten(1).any(dim=1).sum())
        raise DistillError(f"{name} holds {bad} image(s) with NaN or inf values; metrics need finite images")
    return x


def _feature_module(classifier: DigitsClassifier | ClassifierFeatures | None) -> ClassifierFeatures:
    if classifier is None:
        classifier = load_digits_classifier()
    if isinstance(classifier, ClassifierFeatures):
        return classifier
    return ClassifierFeatures(classifier)


def fd_features(x: torch.Tensor | DataBatch, classifier: DigitsClassifier | None = None) -> torch.Tensor:
    """The classifier's penultimate features of images ``x``: float32 ``[N, F]`` (no grad).

    ``classifier=None`` uses the bundled one (:func:`load_digits_classifier`).
    """
    return _feature_module(classifier)(_images("x", x))


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[F]`` and unbiased covariance ``[F, F]`` of ``features [N, F]`` (float64)."""
    f = features.detach().double()
    if f.ndim != 2 or f.shape[0] < 2:
        raise DistillError(f"Gaussian statistics need at least 2 feature vectors [N, F], got shape {tuple(f.shape)}")
    mu = f.mean(dim=0)
    d = f - mu
    return mu, d.T @ d / (f.shape[0] - 1)


def _sqrt_psd(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """Fréchet (Wasserstein-2 squared) distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)``.

    Dowson & Landau (1982); the FID formula of Heusel et al. (2017)::

        d^2 = |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^{1/2})

    ``tr (C1 C2)^{1/2}`` equals ``tr (C1^{1/2} C2 C1^{1/2})^{1/2}`` (the two matrices
    are similar), which is evaluated with symmetric eigendecompositions in float64,
    clamping round-off negative eigenvalues to zero. This is the reference against
    which torchmetrics' implementation (eigenvalues of ``C1 C2``) is tested.
    """
    mu1, mu2 = mu1.double(), mu2.double()
    cov1, cov2 = cov1.double(), cov2.double()
    s1 = _sqrt_psd(cov1)
    m = s1 @ cov2 @ s1
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * tr_sqrt)


def kth_nn_radii(f: torch.Tensor, k: int = 3, chunk: int = 2048) -> torch.Tensor:
    """Distance from each row of ``f [N, F]`` to its ``k``-th nearest *other* row (float64 ``[N]``)."""
    if f.shape[0] <= k:
        raise DistillError(f"k-NN radii with k={k} need more than {k} points, got {f.shape[0]}")
    f = f.double()
    out = []
    for i in range(0, f.shape[0], chunk):
        d = torch.cdist(f[i:i + chunk], f)
        # The k+1 smallest distances include the point itself (distance 0).
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def _ball_counts(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """For each point, how many balls ``B(centres_j, radii_j)`` contain it (Long ``[len(points)]``)."""
    points, centres, radii = points.double(), centres.double(), radii.double()
    out = []
    for i in range(0, points.shape[0], chunk):
        d = torch.cdist(points[i:i + chunk], centres)
        out.append((d <= radii[None, :]).sum(dim=1))
    return torch.cat(out)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall of ``fake`` against ``real`` features.

    Kynkäänniemi et al. (2019): the manifold of a set ``Phi`` is the union
    of balls around each of its points with radius the distance to its ``k``-th
    nearest neighbour in ``Phi``; ``f(phi, Phi) = 1`` if ``phi`` lies in it::

        precision = 1/|Phi_g| sum_{phi_g} f(phi_g, Phi_r)     (fakes on the real manifold)
        recall    = 1/|Phi_r| sum_{phi_r} f(phi_r, Phi_g)     (reals on the fake manifold)

    The paper uses k = 3 and equal set sizes; recall in particular depends on the
    number of fakes, so compare numbers measured at the same sizes.
    """
    r_real = kth_nn_radii(real, k)
    r_fake = kth_nn_radii(fake, k)
    precision = (_ball_counts(fake, real, r_real) > 0).double().mean()
    recall = (_ball_counts(real, fake, r_fake) > 0).double().mean()
    return float(precision), float(recall)


def coverage_density(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Coverage and density of ``fake`` against ``real`` features (Naeem et al. 2020).

    With ``B(X_i, NND_k(X_i))`` the ball around real point ``X_i`` reaching its ``k``-th
    nearest real neighbour, ``N`` reals and ``M`` fakes ``Y_j``::

        coverage = 1/N sum_i 1[ exists j: Y_j in B(X_i, NND_k(X_i)) ]
        density  = 1/(k M) sum_j sum_i 1[ Y_j in B(X_i, NND_k(X_i)) ]

    Only real-sample balls are used, so one outlier fake cannot inflate either
    (unlike recall); density is not bounded by 1 (about 1 for matching sets).
    """
    r_real = kth_nn_radii(real, k)
    fake_counts = _ball_counts(fake, real, r_real)
    # A real point is covered when its nearest fake lies inside its own ball.
    real, fake = real.double(), fake.double()
    nearest = torch.cat([torch.cdist(real[i:i + 2048], fake).min(dim=1).values for i in range(0, real.shape[0], 2048)])
    coverage = (nearest <= r_real).double().mean()
    density = fake_counts.double().sum() / (k * fake.shape[0])
    return float(coverage), float(density)


@torch.no_grad()
def class_accuracy(
    samples: torch.Tensor, cond: torch.Tensor, classifier: DigitsClassifier | None = None, batch_size: int = 1024
) -> float:
    """Fraction of samples whose predicted class (argmax of the classifier) is the requested one.

    ``cond`` holds class labels ``[N]``; entries equal to the null class id
    (``num_classes``, unconditional samples) are left out. Returns NaN when none remain.
    """
    clf = classifier if classifier is not None else load_digits_classifier()
    if isinstance(clf, ClassifierFeatures):
        clf = clf.classifier
    x = _images("samples", samples)
    y = _labels(cond, x.shape[0], clf.num_classes)
    keep = y != clf.num_classes
    if not keep.any():
        return float("nan")
    x, y = x[keep], y[keep]
    device = next(clf.parameters()).device
    preds = torch.cat([clf(x[i:i + batch_size].to(device)).argmax(dim=1).cpu() for i in range(0, x.shape[0], batch_size)])
    return float((preds == y).double().mean())


def _labels(cond: Any, n: int, num_classes: int) -> torch.Tensor:
    y = torch.as_tensor(cond).reshape(-1).long().cpu()
    if y.shape[0] != n:
        raise DistillError(f"cond has {y.shape[0]} labels for {n} samples; pass one class label per sample")
    if ((y < 0) | (y > num_classes)).any():
        raise DistillError(
            f"class labels must lie in [0, {num_classes}] ({num_classes} = null class), "
            f"got values in [{int(y.min())}, {int(y.max())}]"
        )
    return y


def _class_accuracy_from_features(clf: DigitsClassifier, features: torch.Tensor, cond: Any) -> float:
    """:func:`class_accuracy` from precomputed penultimate features (eval mode: logits = head(features))."""
    y = _labels(cond, features.shape[0], clf.num_classes)
    keep = y != clf.num_classes
    if not keep.any():
        return float("nan")
    with torch.no_grad():
        preds = clf.head(features[keep].to(next(clf.parameters()).device)).argmax(dim=1).cpu()
    return float((preds == y[keep]).double().mean())


def paired_psnr(samples: torch.Tensor, teacher_samples: torch.Tensor, data_range: float = 2.0) -> float:
    """Mean per-pair PSNR in dB between samples and the teacher's samples from the same noise.

    ``PSNR_i = 10 log10(data_range^2 / MSE_i)`` with ``MSE_i`` the mean squared
    difference of pair ``i`` (data range 2 for images in ``[-1, 1]``); the mean is over
    pairs. Identical pairs would give +inf, so each ``PSNR_i`` is capped at
    :data:`PSNR_CAP_DB` (100 dB): the result is always finite, and 100.0 means
    "identical up to float round-off".
    """
    x = _images("samples", samples).double()
    t = _images("teacher_samples", teacher_samples).double().to(x.device)
    if x.shape != t.shape:
        raise DistillError(
            f"paired PSNR needs samples and teacher_samples of the same shape (pairs from the same noise), "
            f"got {tuple(x.shape)} and {tuple(t.shape)}"
        )
    mse = (x - t).square().flatten(1).mean(dim=1)
    floor = data_range**2 * 10.0 ** (-PSNR_CAP_DB / 10.0)
    psnr = 10.0 * torch.log10(data_range**2 / mse.clamp_min(floor))
    return float(psnr.clamp(max=PSNR_CAP_DB).mean())


def feature_fd(
    samples: torch.Tensor | DataBatch,
    reference: torch.Tensor | DataBatch,
    classifier: DigitsClassifier | ClassifierFeatures | None = None,
) -> float:
    """Fréchet distance between samples and reference in the classifier's features (Heusel et al. 2017).

    Computed by torchmetrics' ``FrechetInceptionDistance`` with
    :class:`ClassifierFeatures` as its ``feature`` module: torchmetrics calls
    ``feature(imgs)`` on exactly what ``update`` receives (``normalize`` only concerns
    its own Inception network), so the images go in as ``[N, 1, 16, 16]`` in
    ``[-1, 1]``; ``num_features`` on the module sizes its float64 running sums.
    """
    x, ref = _images("samples", samples), _images("reference", reference)
    if x.shape[0] < 2 or ref.shape[0] < 2:
        raise DistillError(f"the Fréchet distance needs at least 2 samples on each side, got {x.shape[0]} and {ref.shape[0]}")
    return _torchmetrics_fd(_feature_module(classifier), x, ref)


def _torchmetrics_fd(feat: ClassifierFeatures, x: torch.Tensor, ref: torch.Tensor) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=feat, reset_real_features=True)
    fid.update(ref, real=True)
    fid.update(x, real=False)
    return float(fid.compute())


def _seeded_kid(kid: Any, seed: int) -> tuple[float, float]:
    # torchmetrics draws KID subsets with torch.randperm on the global generator.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = kid.compute()
    return float(mean), float(std)


def image_metrics(
    samples: torch.Tensor,
    reference: DataBatch | torch.Tensor,
    cond: torch.Tensor | None = None,
    classifier: DigitsClassifier | None = None,
    teacher_samples: torch.Tensor | None = None,
    *,
    k: int = 3,
    kid_subsets: int = 50,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """All image metrics of ``samples [N, 1, 16, 16]`` against ``reference`` (the real digits).

    Returns ``fd``, ``kid``, ``kid_std``, ``precision``, ``recall``, ``coverage``,
    ``density``; plus ``class_accuracy`` when ``cond`` (labels ``[N]``) is given and
    ``paired_psnr`` when ``teacher_samples`` (same shape as ``samples``) are given.
    See the module docstring for the papers. KID uses ``kid_subsets`` subsets of
    ``min(kid_subset_size, N, len(reference))`` samples drawn with ``seed``.

    FD and KID run through torchmetrics with :class:`ClassifierFeatures` (the digits
    classifier) as the ``feature`` module; precision/recall/coverage/density use
    the same features (:func:`fd_features`).
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    x = _images("samples", samples)
    ref = _images("reference", reference)
    n, m = x.shape[0], ref.shape[0]
    if n < 2 or m < 2:
        raise DistillError(f"image metrics need at least 2 samples and 2 reference images, got {n} and {m}")
    feat = _feature_module(classifier)
    with feat.remember(x, ref) as (fx, fr):  # one network pass per set, shared by all metrics
        out: dict[str, float] = {"fd": _torchmetrics_fd(feat, x, ref)}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            kid = KernelInceptionDistance(feature=feat, subsets=kid_subsets, subset_size=min(kid_subset_size, n, m))
        kid.update(ref, real=True)
        kid.update(x, real=False)
        out["kid"], out["kid_std"] = _seeded_kid(kid, seed)

    kk = min(k, n - 1, m - 1)
    out["precision"], out["recall"] = precision_recall(fr, fx, kk)
    out["coverage"], out["density"] = coverage_density(fr, fx, kk)
    if cond is not None:
        acc = _class_accuracy_from_features(feat.classifier, fx, cond)
        if not math.isnan(acc):
            out["class_accuracy"] = acc
    if teacher_samples is not None:
        out["paired_psnr"] = paired_psnr(x, teacher_samples)
    return out
