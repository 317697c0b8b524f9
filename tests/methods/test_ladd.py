"""ladd: synthetic "real" samples from the teacher's ODE, a purely adversarial student loss on the
teacher's features of re-noised samples at logit-normal times, heads on every layer, and the
engine's frozen teacher passing gradients through."""
from __future__ import annotations

import math

import pytest
import torch

from distill import Batch, Denoiser, Roles, make_process, sampling_schedule
from distill.config import _build_run
from distill.engine.module import DistillModule
from distill.errors import DistillError
from distill.methods.heads import MultiLayerHead
from distill.methods.ladd import LADD
from distill.modality import Modality
from distill.nets.mlp import MLPDenoiserNet
from distill.samplers import heun
from tests.fixtures.mixture_plugin import MixModality
from tests.methods.test_add import B, HIDDEN, make_roles

CACHE = {"cache_size": 64, "cache_batch": 32, "teacher_steps": 4}


class Plane(Modality):
    name = "plane"

    @property
    def sample_shape(self):
        return (2,)


def _method(roles, **options) -> LADD:
    method = LADD(LADD.Options(**{**CACHE, **options}))
    method.setup(roles, Plane())
    return method


def test_real_samples_are_cached_teacher_ode_endpoints():
    process = make_process("flow")
    roles = make_roles(process)
    method = _method(roles, features="critic")
    assert not method.needs_data
    cache = method.points.cache
    assert cache.x0.shape == (64, 2) and cache.cond is None
    again = heun(roles.teacher, cache.noise[:8], timesteps=sampling_schedule(process, 4)).x0
    assert torch.allclose(cache.x0[:8], again, atol=1e-6)
    # the discriminator phase's real samples are cache entries, drawn first from the batch's generator
    seen = []
    method._logits = lambda roles, x_t, t, cond, label=None: (seen.append((x_t, t)), x_t.sum(1)[None])[1]
    method.loss("discriminator", Batch(noise=torch.randn(B, 2), generator=torch.Generator().manual_seed(4)), roles)
    replay = Batch(noise=torch.randn(B, 2), generator=torch.Generator().manual_seed(4))
    real = cache.x0[replay.randint(64, B)]
    x = roles.student.net.x0.detach()
    z = replay.randn_like(torch.empty(B))
    t = process.t_min + torch.sigmoid(1.0 + z) * (process.t_max - process.t_min)
    fake_t = process.add_noise(x, replay.randn_like(x), t)
    real_t = process.add_noise(real, replay.randn_like(x), t)
    assert torch.allclose(seen[0][0], torch.cat([fake_t, real_t]), atol=1e-6)


def test_real_data_source_uses_the_batch():
    process = make_process("flow")
    roles = make_roles(process)
    method = _method(roles, features="critic", real="data")
    assert method.needs_data and method.points.cache is None
    x0 = torch.randn(B, 2)
    drawn, cond = method._real(Batch(noise=torch.randn(B, 2), x0=x0, generator=torch.Generator().manual_seed(0)))
    assert drawn is x0 and cond is None
    with pytest.raises(DistillError, match="real data"):
        method._real(Batch(noise=torch.randn(B, 2), generator=torch.Generator().manual_seed(0)))


def test_student_loss_is_purely_adversarial_on_teacher_features_of_renoised_samples():
    """No distillation term: L_G = -sum_k mean D_k(F_k(alpha_t x + sigma_t eps, t)) on every block
    of the frozen teacher, with t = t_min + sigmoid(1 + z) (t_max - t_min) (LADD's logit-normal)."""
    process = make_process("flow")
    roles = make_roles(process, features="teacher")
    method = _method(roles)
    assert method.layers == ["blocks.0", "blocks.1"]  # feature_layers unset: a head on every layer
    batch = Batch(noise=torch.randn(B, 2), generator=torch.Generator().manual_seed(9))
    losses = method.loss("student", batch, roles)
    assert set(losses.terms) == {"adversarial"}
    replay = Batch(noise=batch.noise, generator=torch.Generator().manual_seed(9))
    replay.randint(64, B)  # the cached real samples (one-step student: no input from them)
    x = roles.student.net.x0.detach()
    t = process.t_min + torch.sigmoid(1.0 + replay.randn_like(torch.empty(B))) * (process.t_max - process.t_min)
    x_t = process.add_noise(x, replay.randn_like(x), t)
    with roles.teacher.tap("blocks.0", "blocks.1") as feats:
        roles.teacher.raw(x_t, t)
    logits = torch.stack([h(feats[n]) for n, h in zip(["blocks.0", "blocks.1"], roles.discriminator.heads)])
    assert torch.allclose(losses.total, -logits.mean(1).sum(), rtol=1e-5)
    averaged = _method(roles, head_reduce="mean", loss="non_saturating")
    mean_loss = averaged.loss("student", Batch(noise=batch.noise, generator=torch.Generator().manual_seed(9)), roles)
    assert torch.allclose(mean_loss.total, torch.nn.functional.softplus(-logits).mean(1).mean(), rtol=1e-5)


def test_logit_normal_times_are_biased_to_noise():
    """LADD's pi(t; m=1, s=1) on flow time: median t_min + sigmoid(1) (t_max - t_min) = 0.731. The
    sample median of n draws has standard error 1 / (2 f sqrt(n)), f = 1 / (s u (1 - u) sqrt(2 pi))
    the density at the median u = sigmoid(1): 0.0038 at n = 4096; the bound is 5 of them."""
    process = make_process("flow")
    method = _method(make_roles(process), features="critic")
    n = 4096
    t = method._disc_times(Batch(noise=torch.zeros(n, 2), generator=torch.Generator().manual_seed(0)))
    u = 1 / (1 + math.exp(-1))
    median = process.t_min + u * (process.t_max - process.t_min)
    se = 1 / (2 * (1 / (u * (1 - u) * math.sqrt(2 * math.pi))) * math.sqrt(n))
    assert abs(float(t.median()) - median) < 5 * se
    assert float(t.min()) >= process.t_min and float(t.max()) <= process.t_max
    narrow = _method(make_roles(process), features="critic", disc_t_lo=0.2, disc_t_hi=0.4)
    t = narrow._disc_times(Batch(noise=torch.zeros(n, 2), generator=torch.Generator().manual_seed(0)))
    span = process.t_max - process.t_min
    assert float(t.min()) >= process.t_min + 0.2 * span - 1e-6 and float(t.max()) <= process.t_min + 0.4 * span + 1e-6


def test_engine_freezes_the_teacher_and_gradients_pass_through_it():
    """The engine's module with a network teacher: the teacher's weights are frozen and never get a
    gradient; in the student phase only the student does (through the teacher and the heads), in
    the discriminator phase only the heads."""
    process = make_process("flow")
    torch.manual_seed(0)
    teacher = Denoiser(MLPDenoiserNet(dim=2, hidden=HIDDEN, depth=2), process, "flow")
    cfg = _build_run({"modality": "mix", "method": "ladd", "method_args": CACHE, "data": {"batch_size": 16},
                      "trainer": {"max_steps": 1, "progress": False}})
    method = LADD(LADD.Options(**CACHE))
    module = DistillModule(method, MixModality(MixModality.Options()), teacher, cfg)
    assert all(not p.requires_grad for p in module.teacher.parameters())
    assert isinstance(module.roles.discriminator, MultiLayerHead)
    for index, phase in enumerate(method.phases(0)):
        module._set_trainable(method.phase_roles(phase))
        losses = method.loss(phase, module.make_batch(0, index), module.roles)
        losses.total.backward()
        grads = {name: any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
                 for name, m in module.trained.items()}
        assert grads == {"student": phase == "student", "discriminator": phase == "discriminator"}, (phase, grads)
        assert all(p.grad is None for p in module.teacher.parameters())
        for m in module.trained.values():
            m.zero_grad(set_to_none=True)


def test_fresh_critic_is_the_modality_network_read_like_the_teacher():
    """features=critic: the critic role is the modality's reference network with critic_network's
    overrides, wrapped like the teacher (process, prediction, time input), heads on its blocks."""
    process = make_process("flow")
    roles = make_roles(process)
    method = LADD(LADD.Options(**CACHE, features="critic", critic_network={"hidden": 8}))
    spec = {r.name: r for r in method.roles()}
    critic = method.build_role(spec["critic"], roles, MixModality(MixModality.Options()))
    assert isinstance(critic.net, MLPDenoiserNet) and critic.net.config["hidden"] == 8
    assert (critic.process, critic.prediction, critic.time_input) == (process, "x0", "t")
    head = method.build_role(spec["discriminator"], Roles({**dict(roles.items()), "critic": critic}), None)
    assert head.config["channels"] == {"blocks.0": 8, "blocks.1": 8}
    with pytest.raises(DistillError, match="critic_network"):
        LADD(LADD.Options(critic_network={"hidden": 8}))  # features=teacher has no critic


def test_options_and_errors():
    method = LADD()
    o = method.options
    assert (o.features, o.real, o.disc_time, o.disc_t_mean, o.disc_t_std, o.r1_weight) == (
        "teacher", "teacher", "logit_normal", 1.0, 1.0, 0.0)
    assert [r.name for r in method.roles()] == ["student", "discriminator"] and not method.needs_data
    with pytest.raises(DistillError, match="real must be one of"):
        LADD(LADD.Options(real="dataset"))
    with pytest.raises(DistillError, match="cache_size"):
        LADD(LADD.Options(cache_size=0))
    with pytest.raises(DistillError, match="disc_t_std"):
        LADD(LADD.Options(disc_t_std=0.0))
    with pytest.raises(DistillError, match="features=critic"):
        _method(make_roles(make_process("flow")))  # the exact teacher has no feature layers
