"""add: ADD's distillation term against the exact teacher, the GAN losses in closed form, R1,
the student's inputs, and gradients through frozen teacher features."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from distill import Batch, Denoiser, Roles, make_process
from distill.errors import DistillError
from distill.methods.add import ADD, distill_weight_c
from distill.methods.adversarial import discriminator_loss, generator_loss, r1_penalty, reduce_heads
from distill.methods.heads import MultiLayerHead
from distill.nets.mlp import MLPDenoiserNet
from distill.process.mixture import GaussianMixture
from tests.fixtures.exact import ExactNet
from tests.methods.test_dmd2 import FixedOutput

B, HIDDEN = 32, 16


def mixture() -> GaussianMixture:
    return GaussianMixture.ring(k=4, radius=2.0, std=0.2)


def make_roles(process, features: str = "critic", student: nn.Module | None = None, labels: int = 0) -> Roles:
    """Exact teacher (or a frozen MLP teacher with feature layers), a free-parameter student,
    a fresh MLP critic and one head per critic (or teacher) block."""
    gen = torch.Generator().manual_seed(0)
    if student is None:
        student = FixedOutput(GaussianMixture(mixture().means * 0.7, mixture().stds, mixture().weights).sample(B, gen).x)
    torch.manual_seed(0)
    roles = {"student": Denoiser(student, process, "x0")}
    if features == "critic":
        roles["teacher"] = Denoiser(ExactNet(mixture(), process), process, "x0")
        roles["critic"] = Denoiser(MLPDenoiserNet(dim=2, hidden=HIDDEN, depth=2), process, "x0")
    else:  # a network teacher, frozen as the engine freezes it
        roles["teacher"] = Denoiser(MLPDenoiserNet(dim=2, hidden=HIDDEN, depth=2), process, "x0").requires_grad_(False)
    roles["discriminator"] = MultiLayerHead({"blocks.0": HIDDEN, "blocks.1": HIDDEN}, labels=labels)
    return Roles(roles)


def real_batch(seed: int, noise_seed: int = 1) -> Batch:
    noise = torch.randn(B, 2, generator=torch.Generator().manual_seed(noise_seed))
    x0 = mixture().sample(B, torch.Generator().manual_seed(noise_seed + 100)).x
    return Batch(noise=noise, x0=x0, generator=torch.Generator().manual_seed(seed))


def _uniform_times(process, u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return process.t_min + (lo + (hi - lo) * u) * (process.t_max - process.t_min)


@pytest.mark.parametrize("weighting", ["exponential", "sds", "none"])
def test_distill_gradient_is_weighted_regression_onto_exact_teacher_x0(weighting):
    """ADD eq. 4 with d = mse: L = mean_b c(t_b) |x_b - x0*(x_t,b)|^2 / D, so with a free-parameter
    student dL/dx_b = lambda c(t_b) 2 (x_b - x0*) / (B D), x0* the mixture's posterior mean."""
    process = make_process("flow")
    roles = make_roles(process)
    lam = 2.5
    method = ADD(ADD.Options(features="critic", adversarial_weight=0.0, distill_weight=lam, weighting=weighting))
    method.setup(roles, None)
    losses = method.loss("student", real_batch(3), roles)
    assert set(losses.terms) == {"adversarial", "distill"}
    losses.total.backward()

    replay = real_batch(3)
    x = roles.student.net.x0.detach()
    replay.rand(B), replay.randn_like(x)  # the adversarial term's times and noise (one-step: no time index)
    t = _uniform_times(process, replay.rand(B), 0.02, 0.98)
    a, s = process.alpha(t).view(-1, 1), process.sigma(t).view(-1, 1)
    x_t = a * x + s * replay.randn_like(x)
    target = mixture().posterior_mean(x_t, a, s).float()
    c = {"exponential": a, "sds": a * s / 2, "none": torch.ones_like(a)}[weighting]
    assert torch.allclose(losses.terms["distill"], (c * (x - target).pow(2).mean(1, keepdim=True)).mean(), rtol=1e-5)
    expected = lam * c * 2 * (x - target) / x.numel()
    assert torch.allclose(roles.student.net.x0.grad, expected, rtol=1e-4, atol=1e-8)


def test_sds_weighting_is_the_score_distillation_gradient():
    """With c(t) = alpha sigma / 2 the gradient equals w(t) (eps_teacher - eps') / (B D), w = sigma^2
    (Poole et al. 2022, eq. 3): the noise the exact teacher sees minus the noise that was added."""
    process = make_process("flow")
    roles = make_roles(process)
    method = ADD(ADD.Options(features="critic", adversarial_weight=0.0, distill_weight=1.0, weighting="sds"))
    method.setup(roles, None)
    method.loss("student", real_batch(5), roles).total.backward()
    replay = real_batch(5)
    x = roles.student.net.x0.detach()
    replay.rand(B), replay.randn_like(x)
    t = _uniform_times(process, replay.rand(B), 0.02, 0.98)
    eps = replay.randn_like(x)
    x_t = process.add_noise(x, eps, t)
    eps_teacher = roles.teacher.predict(x_t, t, target="eps")
    expected = process.sigma(t).view(-1, 1) ** 2 * (eps_teacher - eps) / x.numel()
    assert torch.allclose(roles.student.net.x0.grad, expected, rtol=1e-3, atol=1e-7)


def test_distill_weighting_functions():
    process = make_process("vp")
    t = torch.tensor([0.1, 0.5, 0.9])
    a, s = process.alpha(t.double()), process.sigma(t.double())
    assert torch.equal(distill_weight_c(process, t, "exponential"), a)
    assert torch.allclose(distill_weight_c(process, t, "sds"), a * s / 2)
    assert torch.equal(distill_weight_c(process, t, "none"), torch.ones(3, dtype=torch.float64))
    with pytest.raises(DistillError, match="weighting"):
        distill_weight_c(process, t, "nfsd")


def test_gan_losses_in_closed_form():
    real = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.5, 3.0]])  # [K=2 heads, B=3]
    fake = torch.tensor([[-2.0, 0.5, 1.0], [0.2, -0.4, -3.0]])
    # hinge (ADD eq. 2-3): max(0, 1 - D(real)) + max(0, 1 + D(fake)); G: -D(fake)
    hinge = discriminator_loss(real, fake, "hinge")
    assert torch.allclose(hinge, torch.tensor([(0 + 0.5 + 2) / 3 + (0 + 1.5 + 2) / 3, (1 + 0 + 0) / 3 + (1.2 + 0.6 + 0) / 3]))
    assert torch.allclose(generator_loss(fake, "hinge"), torch.tensor([0.5 / 3, 3.2 / 3]))
    sp = torch.nn.functional.softplus
    assert torch.allclose(discriminator_loss(real, fake, "non_saturating"), sp(-real).mean(1) + sp(fake).mean(1))
    assert torch.allclose(generator_loss(fake, "non_saturating"), sp(-fake).mean(1))
    per_head = torch.tensor([1.0, 3.0])
    assert reduce_heads(per_head, "sum") == 4.0 and reduce_heads(per_head, "mean") == 2.0
    with pytest.raises(DistillError, match="hinge"):
        generator_loss(fake, "wasserstein")


def test_r1_of_a_linear_discriminator_is_its_squared_weight_norm():
    w = torch.tensor([0.3, -1.2])
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    assert torch.allclose(r1_penalty(x @ w, x), w.pow(2).sum())


def test_discriminator_phase_hinge_and_r1_on_replayed_samples():
    """Discriminator loss = hinge on (real, fake) noised to the same times + gamma R1 at the real
    inputs; with logits D(x) = w . x the R1 term is gamma |w|^2."""
    process = make_process("flow")
    roles = make_roles(process)
    gamma, w = 0.1, torch.tensor([0.7, -0.4])
    method = ADD(ADD.Options(features="critic", r1_weight=gamma, disc_t_lo=0.0, disc_t_hi=0.1))
    method.setup(roles, None)
    seen = []

    def logits(roles, x_t, t, cond, label=None):
        seen.append((x_t, t))
        return (x_t @ w)[None]  # one head
    method._logits = logits
    losses = method.loss("discriminator", real_batch(7), roles)

    replay = real_batch(7)
    x = roles.student.net.x0.detach()
    t = _uniform_times(process, replay.rand(B), 0.0, 0.1)
    fake_t = process.add_noise(x, replay.randn_like(x), t)
    real_t = process.add_noise(replay.x0, replay.randn_like(x), t)
    both, t_both = seen[0]
    assert torch.allclose(both, torch.cat([fake_t, real_t])) and torch.allclose(t_both, torch.cat([t, t]))
    hinge = torch.relu(1 - real_t @ w).mean() + torch.relu(1 + fake_t @ w).mean()
    assert torch.allclose(losses.terms["discriminator"], hinge)
    assert torch.allclose(losses.terms["r1"], w.pow(2).sum())
    assert torch.allclose(losses.total, hinge + gamma * w.pow(2).sum())


def test_lazy_r1_every_kth_step_at_k_times_the_weight():
    process = make_process("flow")
    roles = make_roles(process)
    gamma, w = 0.1, torch.tensor([0.7, -0.4])
    method = ADD(ADD.Options(features="critic", r1_weight=gamma, r1_every=2))
    method.setup(roles, None)
    method._logits = lambda roles, x_t, t, cond, label=None: (x_t @ w)[None]
    skipped = method.loss("discriminator", Batch(**{**vars(real_batch(7)), "step": 1}), roles)
    assert "r1" not in skipped.terms and torch.equal(skipped.total, skipped.terms["discriminator"])
    lazy = method.loss("discriminator", Batch(**{**vars(real_batch(7)), "step": 2}), roles)
    assert torch.allclose(lazy.total, lazy.terms["discriminator"] + 2 * gamma * w.pow(2).sum())


class Echo(nn.Module):
    """Records its inputs; outputs zero (with a parameter so that it has a gradient path)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t, cond=None, **extra):
        self.seen.append((x.detach().clone(), t.detach().clone()))
        return x * self.scale


def test_multistep_student_denoises_noised_data_at_its_times():
    """A 4-step student's input at s = t_k is alpha_s x0 + sigma_s z (ADD sec. 3.1), and the
    sampler's own start sigma(t_max) z at k = 0 (vp: alpha(t_max) > 0, so the two differ)."""
    process = make_process("vp")
    echo = Echo()
    roles = make_roles(process, student=echo, labels=4)
    method = ADD(ADD.Options(features="critic", distill_weight=0.0))
    method.student_steps = 4
    method.setup(roles, None)
    batch = real_batch(11)
    method.loss("student", batch, roles)
    x_in, s = echo.seen[0]
    replay = real_batch(11)
    index = replay.randint(4, B)
    times = method.student_timesteps(4)[:-1]
    assert torch.allclose(s, times[index].float())
    assert set(index.tolist()) == {0, 1, 2, 3}
    sigma_max = process.sigma(torch.tensor(process.t_max, dtype=torch.float64)).float()
    expected = torch.where((index == 0)[:, None], batch.noise * sigma_max, process.add_noise(batch.x0, batch.noise, s))
    assert torch.allclose(x_in, expected, atol=1e-6)
    assert not torch.allclose(x_in[index == 0], process.add_noise(batch.x0, batch.noise, s)[index == 0])

    # first_step_weight w: k = 0 for u < w, else 1 + floor((u - w) / (1 - w) * 3)
    weighted = ADD(ADD.Options(features="critic", distill_weight=0.0, first_step_weight=0.7))
    weighted.student_steps = 4
    weighted.setup(roles, None)
    echo.seen.clear()
    weighted.loss("student", real_batch(12), roles)
    u = real_batch(12).rand(B).double()
    index = torch.where(u < 0.7, 0, 1 + ((u - 0.7) / 0.3 * 3).floor().long())
    assert torch.allclose(echo.seen[0][1], times[index].float())
    assert 0 < int((index > 0).sum()) < int((index == 0).sum())


def test_multistep_discriminator_reads_the_step_of_each_sample():
    """A 4-step student's heads get each sample's step index; a real sample shares its generated
    partner's. The label embedding starts at zero: the same logits as without labels."""
    process = make_process("flow")
    roles = make_roles(process, labels=4)
    method = ADD(ADD.Options(features="critic"))
    method.student_steps = 4
    method.setup(roles, None)
    seen = []
    method._logits = lambda roles, x_t, t, cond, label=None: (seen.append(label), x_t.sum(1)[None])[1]
    method.loss("discriminator", real_batch(21), roles)
    index = real_batch(21).randint(4, B)
    assert torch.equal(seen[0], torch.cat([index, index]))
    one_step = ADD(ADD.Options(features="critic"))
    one_step.setup(make_roles(process), None)
    one_step._logits = method._logits
    one_step.loss("student", real_batch(21), roles)
    assert seen[-1] is None

    head = MultiLayerHead({"a": 3}, labels=2)
    feats = {"a": torch.randn(5, 3)}
    label = torch.tensor([0, 1, 1, 0, 1])
    assert torch.allclose(head(feats, label), head(feats)) and head.config["labels"] == 2
    with torch.no_grad():
        head.embeds[0].weight[1] = 1.0
    moved = (head(feats, label) - head(feats))[0]
    assert torch.all(moved[label == 0] == 0) and torch.all(moved[label == 1] != 0)
    with pytest.raises(DistillError, match="step labels"):
        method.setup(make_roles(process, labels=0), None)


def test_generator_gradient_passes_through_the_frozen_teacher_features():
    """features=teacher: the heads read the (frozen) teacher's blocks of the noised student sample;
    the loss is -sum_k mean D_k (hinge, summed heads), the student gets its gradient through the
    teacher, and neither the teacher nor the heads (frozen in the student phase) get one."""
    process = make_process("flow")
    roles = make_roles(process, features="teacher")
    roles.discriminator.requires_grad_(False)  # as the engine leaves it in the student phase
    method = ADD(ADD.Options(distill_weight=0.0))
    assert method.options.features == "teacher"
    method.setup(roles, None)
    losses = method.loss("student", real_batch(13), roles)
    losses.total.backward()

    replay = real_batch(13)
    x = roles.student.net.x0.detach().clone().requires_grad_(True)
    t = _uniform_times(process, replay.rand(B), 0.0, 0.1)  # ADD's default: lightly noised
    x_t = process.add_noise(x, replay.randn_like(x), t)
    with roles.teacher.tap("blocks.0", "blocks.1") as feats:
        roles.teacher.raw(x_t, t)
    heads = roles.discriminator.heads
    manual = -(heads[0](feats["blocks.0"]).mean() + heads[1](feats["blocks.1"]).mean())
    assert torch.allclose(losses.terms["adversarial"], manual, rtol=1e-5)
    (grad,) = torch.autograd.grad(manual, x)
    assert grad.abs().sum() > 0
    assert torch.allclose(roles.student.net.x0.grad, grad, rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in roles.teacher.parameters())
    assert all(p.grad is None for p in roles.discriminator.parameters())


def test_roles_phases_and_data():
    method = ADD()
    assert ADD.needs_data and ADD.kinds == frozenset({"continuous"})
    assert [r.name for r in method.roles()] == ["student", "discriminator"]
    assert method.phases(0) == ["discriminator", "student"] and method.phase_roles("discriminator") == ["discriminator"]
    critic = ADD(ADD.Options(features="critic", discriminator_updates=2))
    assert [r.name for r in critic.roles()] == ["student", "critic", "discriminator"]
    assert all(r.betas == (0.0, 0.99) for r in critic.roles())  # the GAN convention: no momentum
    assert critic.phases(5) == ["discriminator", "discriminator", "student"]
    assert critic.phase_roles("discriminator") == ["critic", "discriminator"]
    o = method.options
    assert (o.distill_weight, o.r1_weight, o.loss, o.weighting) == (2.5, 1e-5, "hinge", "exponential")


def test_errors_say_what_to_do():
    process = make_process("flow")
    exact = make_roles(process)  # the exact teacher has no feature layers
    with pytest.raises(DistillError, match="features=critic"):
        ADD().setup(exact, None)
    method = ADD(ADD.Options(features="critic"))
    method.setup(exact, None)
    with pytest.raises(DistillError, match="real data"):
        method.loss("student", Batch(noise=torch.randn(B, 2), generator=torch.Generator().manual_seed(0)), exact)
    with pytest.raises(DistillError, match="not in"):
        ADD(ADD.Options(features="critic", feature_layers=["blocks.7"])).setup(exact, None)
    for bad, match in [({"loss": "wgan"}, "loss"), ({"features": "dino"}, "features"), ({"weighting": "snr"}, "weighting"),
                       ({"disc_t_lo": 0.5, "disc_t_hi": 0.2}, "disc_t_lo"), ({"distance": "lpips"}, "distance"),
                       ({"discriminator_updates": 0}, "discriminator_updates"), ({"distill_weight": -1.0}, "distill_weight"),
                       ({"head_reduce": "max"}, "head_reduce"), ({"first_step_weight": 1.5}, "first_step_weight"),
                       ({"r1_every": 0}, "r1_every")]:
        with pytest.raises(DistillError, match=match):
            ADD(ADD.Options(**bad))
