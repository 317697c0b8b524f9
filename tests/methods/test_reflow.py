"""reflow: flow matching on the straight path between teacher couplings; one-step distillation stage."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from distill import Batch, Denoiser, Roles, make_process, make_time_sampler, sampling_schedule
from distill.engine.run import train
from distill.errors import DistillError
from distill.methods.pairs import TeacherPairs
from distill.methods.reflow import Reflow
from distill.modality import Modality
from distill.process.mixture import GaussianMixture
from distill.samplers import heun
from tests.engine.test_engine import _bytes, tiny
from tests.fixtures.exact import ExactNet

A = torch.tensor([2.0, 0.5], dtype=torch.float64)  # the coupling x1 = A z (elementwise), z ~ N(0, I)


class Plane(Modality):
    name = "plane"

    @property
    def sample_shape(self):
        return (2,)


class StraightVelocity(nn.Module):
    """The rectified flow of the coupling x1 = A z: on x_t = (1 - t) A z + t z, z = x_t / ((1 - t) A + t),
    and the velocity is z - x1 = (1 - A) x_t / ((1 - t) A + t). The paths never cross (A > 0)."""

    def forward(self, x, t, cond=None, **extra):
        t = t.to(torch.float64)[:, None]
        a = A.to(x.device)
        return ((1 - a) * x.double() / ((1 - t) * a + t)).to(x.dtype)


class Echo(nn.Module):
    """Velocity = x_t itself: the loss then measures x_t against the target directly."""

    def forward(self, x, t, cond=None, **extra):
        return x


class Constant(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = nn.Parameter(torch.as_tensor(value, dtype=torch.float32).clone())

    def forward(self, x, t, cond=None, **extra):
        return self.value.to(x.dtype).expand_as(x)


def exact_teacher(process):
    return Denoiser(ExactNet(GaussianMixture.ring(k=4, radius=2.0, std=0.2), process), process, "x0")


def linear_pairs(n: int = 256, dtype=torch.float64) -> TeacherPairs:
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=dtype)
    return TeacherPairs(z, (A.to(dtype) * z), None)


def make(process, student: nn.Module, **options) -> tuple[Reflow, Roles]:
    method = Reflow(Reflow.Options(pairs="on_the_fly", **options))
    roles = Roles({"teacher": exact_teacher(process), "student": Denoiser(student, process, "flow")})
    method.setup(roles, Plane())
    return method, roles


def test_interpolation_is_flow_convention_from_teacher_sample_to_noise():
    """x_t = (1 - t) x1 + t z, target velocity z - x1 (alpha = 1 - t, sigma = t; noise at t = 1)."""
    process = make_process("flow")
    method, roles = make(process, Echo())
    method.cache = linear_pairs(dtype=torch.float32)
    losses = method.loss("reflow", Batch(noise=torch.zeros(64, 2), generator=torch.Generator().manual_seed(1)), roles)
    replay = Batch(noise=torch.zeros(64, 2), generator=torch.Generator().manual_seed(1))
    index = replay.randint(256, 64)
    t = make_time_sampler("uniform")(64, process, generator=replay.generator)[:, None]
    z, x1 = method.cache.noise[index], method.cache.x0[index]
    x_t = (1 - t) * x1 + t * z
    assert torch.allclose(losses.total, (x_t - (z - x1)).pow(2).mean(), rtol=1e-5)
    assert set(losses.terms) == {"flow_mse"}


def test_straight_coupling_has_zero_loss_and_exact_euler_at_any_step_count():
    """For a coupling whose straight paths never cross, the rectified velocity fits it exactly and
    Euler is exact: 1, 2 and 4 steps all return x1 = A z."""
    process = make_process("flow")
    method, roles = make(process, StraightVelocity())
    method.cache = linear_pairs()
    batch = Batch(noise=torch.zeros(128, 2, dtype=torch.float64), generator=torch.Generator().manual_seed(2))
    # Training times are float32 (the time sampler's dtype), so alpha_t = 1 - t is rounded to
    # ~6e-8 relative in add_noise: squared errors of |x| <~ 5 stay below (5 * 6e-8)^2 ~ 1e-13.
    assert float(method.loss("reflow", batch, roles).total) < 1e-12
    z = method.cache.noise[:32]
    for steps in (1, 2, 4):
        result = method.sample(roles.student, z, steps=steps)
        assert result.nfe == steps and torch.allclose(result.x0, A * z, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("space", ["x0", "eps", "native"])
def test_loss_space_compares_the_same_pair_in_another_prediction(space):
    """The straight-path velocity also has zero loss in x0, eps or the student's native space."""
    process = make_process("flow")
    method, roles = make(process, StraightVelocity(), loss_space=space)
    method.cache = linear_pairs()
    batch = Batch(noise=torch.zeros(64, 2, dtype=torch.float64), generator=torch.Generator().manual_seed(3))
    losses = method.loss("reflow", batch, roles)
    assert float(losses.total) < 1e-12  # float32 times, as above
    assert set(losses.terms) == {f"{'flow' if space == 'native' else space}_mse"}


def test_on_the_fly_pairs_are_teacher_heun_endpoints():
    """With a zero-velocity student the loss is |z - x1|^2 whatever t, x1 = the teacher's Heun endpoint of z."""
    process = make_process("flow")
    method, roles = make(process, Constant(torch.zeros(2)), teacher_steps=6)
    noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(4))
    loss = method.loss("reflow", Batch(noise=noise, generator=torch.Generator().manual_seed(5)), roles).total
    x1 = heun(roles.teacher, noise, timesteps=sampling_schedule(process, 6)).x0
    assert torch.allclose(loss, (noise - x1).pow(2).mean(), rtol=1e-5)


def test_distillation_stage_switches_by_step_and_regresses_the_frozen_reflow_map():
    process = make_process("flow")
    method = Reflow(Reflow.Options(pairs="on_the_fly", distill_from_step=10, distill_teacher_steps=3))
    roles = Roles({"teacher": exact_teacher(process), "student": Denoiser(StraightVelocity(), process, "flow"),
                   "reflow_teacher": Denoiser(Constant(torch.zeros(2)), process, "flow")})
    assert [r.name for r in method.roles()] == ["student", "reflow_teacher"]
    assert [method.phases(s) for s in (0, 9, 10, 500)] == [["reflow"], ["reflow"], ["distill"], ["distill"]]
    assert method.phase_roles("distill") == ["student"]
    # copy_weights needs the same architecture: give the straight velocity a (dummy) parameter too.
    roles.student.net.register_parameter("value", nn.Parameter(torch.zeros(2)))
    method.setup(roles, Plane())
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    batch = Batch(noise=noise, generator=torch.Generator().manual_seed(7), step=10)
    # At the switch the frozen copy takes the student's weights; Constant(0) stays a zero velocity,
    # so its 3-step Euler map is the identity and the target is the noise itself.
    pairs = method.distill_target(batch, roles)
    assert method._frozen and torch.allclose(pairs.x0, noise)
    # The student (straight velocity) maps z to A z in one step: distance |A z - z|^2.
    losses = method.loss("distill", batch, roles)
    assert torch.allclose(losses.total, ((A - 1) * noise).pow(2).mean(), rtol=1e-9)


def test_distillation_on_teacher_pairs_is_kd_on_the_coupling():
    process = make_process("flow")
    method, roles = make(process, StraightVelocity(), distill_from_step=0, distill_target="pairs")
    assert [r.name for r in method.roles()] == ["student"]
    method.cache = linear_pairs()
    losses = method.loss("distill", Batch(noise=torch.zeros(64, 2, dtype=torch.float64), generator=torch.Generator().manual_seed(8)), roles)
    assert float(losses.total) < 1e-20  # the straight velocity's one Euler step is the coupling A z


def test_options_and_errors():
    process = make_process("flow")
    with pytest.raises(DistillError, match="loss_space"):
        Reflow(Reflow.Options(loss_space="score"))
    with pytest.raises(DistillError, match="sampler"):
        Reflow(Reflow.Options(sampler="heun"))
    with pytest.raises(DistillError, match="distill_from_step must be >= 1"):
        Reflow(Reflow.Options(distill_from_step=0))
    with pytest.raises(DistillError, match="student.steps=1"):
        method = Reflow(Reflow.Options(pairs="on_the_fly", distill_from_step=5))
        method.student_steps = 2
        method.setup(Roles({"teacher": exact_teacher(process), "student": exact_teacher(process)}), Plane())
    method = Reflow()
    assert method.phases(10**6) == ["reflow"] and not method.distills


@pytest.mark.parametrize("stop", [3, 5])  # at the switch, and after it
def test_resume_across_the_distillation_switch_is_bitwise_identical(tmp_path, fixture_plugins, stop):
    common = ("method_args.distill_from_step=3", "method_args.distill_teacher_steps=2", "method_args.cache_size=256",
              "method_args.cache_batch=256", "method_args.teacher_steps=4", "ema.half_life=3", "trainer.checkpoint_every=100")
    full = train(tiny(tmp_path / "full", "reflow", "trainer.max_steps=7", *common))
    train(tiny(tmp_path / "part", "reflow", f"trainer.max_steps={stop}", *common))
    resumed = train(tiny(tmp_path / "part", "reflow", "trainer.max_steps=7", *common), resume=True)
    for role in ("student", "student_ema", "reflow_teacher"):
        a, b = _bytes(full.run_dir / f"{role}.safetensors"), _bytes(resumed.run_dir / f"{role}.safetensors")
        for key in a:
            assert torch.equal(a[key], b[key]), f"{role}.{key} differs after resuming at step {stop}"
