"""Policy networks: an observation encoder in front of a denoiser over action chunks.

Two backbones, as in Chi et al. 2023 (Diffusion Policy, Sec. IV-A and IV-B):

* :class:`PolicyUNet` -- the CNN-based diffusion policy: the 1-D temporal UNet with FiLM
  conditioning of :mod:`distill.nets.unet1d`, conditioned on the flattened observation
  features of the last ``n_obs_steps`` steps (a global condition);
* :class:`PolicyTransformer` -- the time-series diffusion transformer: action tokens attend
  causally to each other and cross-attend to a memory of condition tokens (the diffusion time
  and one token per observation step).

Both are called like every distill network, ``net(x [B, horizon, action_dim], t [B], cond,
**extra)``, where ``x`` is the (noised, normalised) action chunk and ``cond`` the *normalised*
observation history: a float tensor ``[B, n_obs_steps, obs_dim]`` of state vectors, or a dict
``{"state": [B, n_obs_steps, obs_dim], "image": [B, n_obs_steps, C, H, W]}`` when the network is
built with ``image_shape``; images go through a small CNN (:class:`ImageEncoder`). ``cond=None``
is the null condition (all-zero features).

Each network carries its :class:`~distill_policy.normalizer.Normalizer` as buffers
(``normalizer.obs_min``, ...), so the statistics are saved in the safetensors file next to the
weights; loading a checkpoint without them fails with a message saying so. Extra scalar
inputs (``extra_inputs``) and the ``config`` / ``feature_layers`` conventions follow
:mod:`distill.nets`, so methods that add inputs (``lcm``, ``meanflow``) or heads (``dmd2``'s GAN)
work unchanged.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from distill.errors import DistillError
from distill.nets.embeddings import ScalarConditioning, SinusoidalEmbedding
from distill.nets.unet1d import UNet1DDenoiserNet
from distill_policy.normalizer import KEYS, Normalizer

__all__ = ["ImageEncoder", "PolicyUNet", "PolicyTransformer", "TransformerDenoiserNet1D", "SpatialSoftmax"]


class SpatialSoftmax(nn.Module):
    """Expected image coordinates of each channel's softmax: ``[B, C, H, W] -> [B, 2C]``
    (Levine et al. 2016, "End-to-End Training of Deep Visuomotor Policies", Sec. 4.2; the
    keypoint pooling of Chi et al.'s image encoders)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, c, height, width = h.shape
        weights = torch.softmax(h.reshape(b, c, height * width), dim=-1)
        ys = torch.linspace(-1.0, 1.0, height, device=h.device, dtype=h.dtype)
        xs = torch.linspace(-1.0, 1.0, width, device=h.device, dtype=h.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        ex = (weights * grid_x.reshape(1, 1, -1)).sum(-1)
        ey = (weights * grid_y.reshape(1, 1, -1)).sum(-1)
        return torch.cat([ex, ey], dim=1)


class ImageEncoder(nn.Module):
    """A small CNN for one camera frame ``[B, C, H, W]`` in [-1, 1] -> ``[B, features]``:
    three stride-2 3x3 convolutions (GroupNorm, Mish; GroupNorm rather than BatchNorm, as Chi et al.
    recommend with EMA), spatial-softmax keypoints, a linear layer."""

    def __init__(self, image_shape: tuple[int, int, int] | list[int], features: int = 32, width: int = 32) -> None:
        super().__init__()
        channels = int(image_shape[0])
        layers: list[nn.Module] = []
        widths = [channels, width // 2, width, width]
        for i in range(3):
            layers += [nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1), nn.GroupNorm(8, widths[i + 1]), nn.Mish()]
        self.conv = nn.Sequential(*layers)
        self.keypoints = SpatialSoftmax()
        self.proj = nn.Linear(2 * width, features)
        self.image_shape = tuple(int(v) for v in image_shape)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(self.keypoints(self.conv(image)))


class _PolicyIO:
    """Observation handling shared by the policy networks (a mixin on an ``nn.Module``)."""

    obs_dim: int
    n_obs_steps: int
    image_encoder: ImageEncoder | None

    @staticmethod
    def _features_per_step(obs_dim: int, action_dim: int, n_obs_steps: int, image_shape, image_features: int) -> int:
        """Condition features of one observation step (state, plus image features with a camera)."""
        if obs_dim < 1 or action_dim < 1 or n_obs_steps < 1:
            raise DistillError(f"a policy needs obs_dim, action_dim and n_obs_steps >= 1; got {obs_dim}, {action_dim}, {n_obs_steps}")
        if image_shape is not None and len(image_shape) != 3:
            raise DistillError(f"image_shape must be (C, H, W); got {image_shape}")
        return int(obs_dim) + (int(image_features) if image_shape else 0)

    def _init_io(self, obs_dim: int, action_dim: int, n_obs_steps: int, image_shape, image_features: int) -> None:
        """Create the normaliser and the image encoder (after the backbone's ``nn.Module`` set-up)."""
        self.obs_dim, self.action_dim, self.n_obs_steps = int(obs_dim), int(action_dim), int(n_obs_steps)
        self.normalizer = Normalizer(obs_dim, action_dim)
        self.image_encoder = ImageEncoder(image_shape, image_features) if image_shape else None

    def encode_obs(self, cond: Any) -> torch.Tensor | None:
        """The global condition ``[B, n_obs_steps * features]`` of a normalised observation history."""
        if cond is None:
            return None
        image = None
        if isinstance(cond, Mapping):
            if "state" not in cond:
                raise DistillError(f"policy cond as a dict needs a 'state' entry [B, {self.n_obs_steps}, {self.obs_dim}]; got keys {sorted(cond)}")
            state, image = cond["state"], cond.get("image")
        else:
            state = cond
        state = torch.as_tensor(state)
        if state.ndim != 3 or state.shape[1] != self.n_obs_steps or state.shape[2] != self.obs_dim:
            got = tuple(state.shape)
            if state.ndim >= 1 and state.shape[-1] != self.obs_dim:
                raise DistillError(
                    f"observations of dimension {state.shape[-1]} (cond shape {got}), but this policy was trained on "
                    f"{self.obs_dim}-dimensional observations; pass [B, {self.n_obs_steps}, {self.obs_dim}] normalised "
                    "observation histories of the task it was trained on"
                )
            raise DistillError(
                f"this policy reads the last {self.n_obs_steps} observations: cond must be [B, {self.n_obs_steps}, "
                f"{self.obs_dim}]; got {got}"
            )
        parts = [state]
        if self.image_encoder is not None:
            if image is None:
                raise DistillError("this policy was built with image_shape and needs cond={'state': ..., 'image': [B, T, C, H, W]}")
            image = torch.as_tensor(image)
            if image.ndim != 5 or tuple(image.shape[1:]) != (self.n_obs_steps, *self.image_encoder.image_shape):
                raise DistillError(
                    f"images must be [B, {self.n_obs_steps}, {', '.join(map(str, self.image_encoder.image_shape))}]; got {tuple(image.shape)}"
                )
            b = image.shape[0]
            feats = self.image_encoder(image.reshape(b * self.n_obs_steps, *image.shape[2:]).to(state.dtype))
            parts.append(feats.reshape(b, self.n_obs_steps, -1))
        elif image is not None:
            raise DistillError("this policy was built without image_shape but got images; build it with image_shape=(C, H, W)")
        return torch.cat(parts, dim=-1).reshape(state.shape[0], -1)

    def _check_normalizer_keys(self, state_dict: Mapping[str, Any], prefix: str = "") -> None:
        missing = [f"normalizer.{k}" for k in KEYS if f"{prefix}normalizer.{k}" not in state_dict]
        if missing:
            raise DistillError(
                f"this policy checkpoint has no normaliser statistics ({', '.join(missing)} missing): a diffusion policy "
                "acts in normalised coordinates and cannot be run without the statistics it was trained with. "
                "Re-export it with distill-plugin-policy (which saves them with the weights), or add them with "
                "distill_policy.normalizer.Normalizer.fit on the training demonstrations"
            )
        bad = [f"normalizer.{k}" for k in KEYS if not torch.isfinite(torch.as_tensor(state_dict[f"{prefix}normalizer.{k}"])).all()]
        if bad:
            raise DistillError(
                f"this policy checkpoint's normaliser statistics are not set ({', '.join(bad)} hold NaN): it was saved "
                "before the normaliser was fitted; fit it on the training demonstrations and re-export"
            )


class PolicyUNet(_PolicyIO, UNet1DDenoiserNet):
    """The CNN-based diffusion policy (see module docstring). ``down_dims`` etc. are the UNet's."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        horizon: int,
        n_obs_steps: int = 2,
        image_shape: list[int] | None = None,
        image_features: int = 32,
        down_dims: tuple[int, ...] | list[int] = (32, 64, 128),
        kernel_size: int = 5,
        groups: int = 8,
        time_dim: int = 64,
        extra_inputs: tuple[str, ...] | list[str] = (),
        time_scale: float = 100.0,
        max_period: float = 10000.0,
    ) -> None:
        per_step = self._features_per_step(obs_dim, action_dim, n_obs_steps, image_shape, image_features)
        UNet1DDenoiserNet.__init__(self, channels=action_dim, horizon=horizon, cond_dim=per_step * int(n_obs_steps),
                                   down_dims=down_dims, kernel_size=kernel_size, groups=groups, time_dim=time_dim,
                                   extra_inputs=extra_inputs, time_scale=time_scale, max_period=max_period)
        self._init_io(obs_dim, action_dim, n_obs_steps, image_shape, image_features)
        self.config = {
            "obs_dim": int(obs_dim), "action_dim": int(action_dim), "horizon": int(horizon), "n_obs_steps": int(n_obs_steps),
            "image_shape": list(image_shape) if image_shape else None, "image_features": int(image_features),
            "down_dims": [int(d) for d in down_dims], "kernel_size": int(kernel_size), "groups": int(groups),
            "time_dim": int(time_dim), "extra_inputs": list(extra_inputs), "time_scale": float(time_scale),
            "max_period": float(max_period),
        }

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None, **extra: Any) -> torch.Tensor:
        return UNet1DDenoiserNet.forward(self, x, t, self.encode_obs(cond), **extra)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        self._check_normalizer_keys(state_dict)
        return nn.Module.load_state_dict(self, state_dict, strict=strict, assign=assign)


class TransformerDenoiserNet1D(nn.Module):
    """Time-series diffusion transformer (Chi et al. 2023, Sec. IV-B, after minGPT): ``forward(x
    [B, horizon, channels], t, cond [B, n_cond, cond_dim] | None, **extra)``.

    Action tokens ``W_in x + pos`` pass through ``depth`` decoder layers (pre-norm, causal
    self-attention, cross-attention to the memory, MLP); the memory is ``[time token, W_c cond_k +
    pos_c]``, encoded by a ``cond_layers``-layer encoder. Output ``W_out LN(h)``, zero-initialised.
    ``feature_layers``: ``"blocks.k"`` (``[B, horizon, width]``).
    """

    def __init__(self, channels: int, horizon: int, cond_tokens: int, cond_dim: int, width: int = 128, depth: int = 4,
                 heads: int = 4, cond_layers: int = 1, dropout: float = 0.0, time_dim: int = 64,
                 extra_inputs: tuple[str, ...] | list[str] = (), time_scale: float = 100.0,
                 max_period: float = 10000.0, causal: bool = True) -> None:
        super().__init__()
        if width % heads:
            raise DistillError(f"transformer width {width} must be divisible by heads {heads}")
        self.channels, self.horizon, self.cond_tokens, self.cond_dim = channels, horizon, cond_tokens, cond_dim
        self.extra_inputs = tuple(extra_inputs)
        self.time_embed = SinusoidalEmbedding(time_dim, width, max_period=max_period, scale=time_scale)
        self.extras = ScalarConditioning(self.extra_inputs, time_dim, width, max_period=max_period, scale=time_scale)
        self.inp = nn.Linear(channels, width)
        self.pos = nn.Parameter(torch.zeros(1, horizon, width))
        self.cond_inp = nn.Linear(cond_dim, width)
        self.cond_pos = nn.Parameter(torch.zeros(1, cond_tokens + 1, width))
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.cond_pos, std=0.02)
        enc = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, activation="gelu", batch_first=True, norm_first=True)
        self.cond_encoder = nn.TransformerEncoder(enc, cond_layers, enable_nested_tensor=False)
        self.blocks = nn.ModuleList(
            nn.TransformerDecoderLayer(width, heads, 4 * width, dropout, activation="gelu", batch_first=True, norm_first=True)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.causal = causal
        self.register_buffer("mask", torch.triu(torch.full((horizon, horizon), float("-inf")), diagonal=1), persistent=False)
        self.feature_layers: dict[str, int] = {f"blocks.{k}": width for k in range(depth)}

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None, **extra: Any) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != self.horizon or x.shape[2] != self.channels:
            raise DistillError(f"TransformerDenoiserNet1D expects x of shape [B, {self.horizon}, {self.channels}]; got {tuple(x.shape)}")
        self.extras.check(extra, owner="TransformerDenoiserNet1D")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        time_token = self.extras(self.time_embed(t), **extra).unsqueeze(1)
        if cond is None:
            cond = x.new_zeros(x.shape[0], self.cond_tokens, self.cond_dim)
        memory = torch.cat([time_token, self.cond_inp(cond.to(x.dtype))], dim=1) + self.cond_pos
        memory = self.cond_encoder(memory)
        h = self.inp(x) + self.pos
        mask = self.mask if self.causal else None
        for block in self.blocks:
            h = block(h, memory, tgt_mask=mask)
        return self.out(self.norm(h))


class PolicyTransformer(_PolicyIO, TransformerDenoiserNet1D):
    """The transformer-based diffusion policy: one condition token per observation step."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        horizon: int,
        n_obs_steps: int = 2,
        image_shape: list[int] | None = None,
        image_features: int = 32,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        cond_layers: int = 1,
        dropout: float = 0.0,
        time_dim: int = 64,
        extra_inputs: tuple[str, ...] | list[str] = (),
        time_scale: float = 100.0,
        max_period: float = 10000.0,
    ) -> None:
        per_step = self._features_per_step(obs_dim, action_dim, n_obs_steps, image_shape, image_features)
        TransformerDenoiserNet1D.__init__(self, channels=action_dim, horizon=horizon, cond_tokens=n_obs_steps,
                                          cond_dim=per_step, width=width, depth=depth, heads=heads, cond_layers=cond_layers,
                                          dropout=dropout, time_dim=time_dim, extra_inputs=extra_inputs,
                                          time_scale=time_scale, max_period=max_period)
        self._init_io(obs_dim, action_dim, n_obs_steps, image_shape, image_features)
        self.config = {
            "obs_dim": int(obs_dim), "action_dim": int(action_dim), "horizon": int(horizon), "n_obs_steps": int(n_obs_steps),
            "image_shape": list(image_shape) if image_shape else None, "image_features": int(image_features),
            "width": int(width), "depth": int(depth), "heads": int(heads), "cond_layers": int(cond_layers),
            "dropout": float(dropout), "time_dim": int(time_dim), "extra_inputs": list(extra_inputs),
            "time_scale": float(time_scale), "max_period": float(max_period),
        }

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None, **extra: Any) -> torch.Tensor:
        features = self.encode_obs(cond)
        tokens = None if features is None else features.reshape(features.shape[0], self.n_obs_steps, -1)
        return TransformerDenoiserNet1D.forward(self, x, t, tokens, **extra)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        self._check_normalizer_keys(state_dict)
        return nn.Module.load_state_dict(self, state_dict, strict=strict, assign=assign)


NETWORKS = {"unet": PolicyUNet, "transformer": PolicyTransformer}
