"""progressive: DDIM inversion target, nested grids, rounds from the step counter, resume, sampler."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from distill import Batch, Denoiser, Roles, make_process, sampling_schedule
from distill.engine.run import train
from distill.errors import DistillError
from distill.methods.progressive import Progressive, copy_weights, ddim_step, ddim_x0, round_plan
from distill.modality import Modality
from distill.process.mixture import GaussianMixture
from distill.samplers import ddim
from tests.engine.test_engine import _bytes, tiny
from tests.fixtures.exact import ExactNet

PROCESSES = ("flow", "vp", "edm")


class Plane(Modality):
    name = "plane"

    @property
    def sample_shape(self):
        return (2,)


class Constant(nn.Module):
    """x0 = a free parameter whatever the input: DDIM is exact for it (x0 is constant on the path)."""

    def __init__(self, value):
        super().__init__()
        self.value = nn.Parameter(torch.as_tensor(value, dtype=torch.float64).clone())

    def forward(self, x, t, cond=None, **extra):
        return self.value.to(x.dtype).expand_as(x)


class CondEcho(nn.Module):
    """x0 = the (float) condition, broadcast: a conditional teacher with a closed-form guided output."""

    def forward(self, x, t, cond=None, **extra):
        return cond.to(x.dtype).expand_as(x)


def exact_teacher(process):
    mixture = GaussianMixture.ring(k=4, radius=2.0, std=0.2)
    return Denoiser(ExactNet(mixture, process), process, "x0")


def method_for(process, final: int, start: int, **options) -> Progressive:
    method = Progressive(Progressive.Options(start_steps=start, **options))
    method.student_steps = final
    method.process = process
    return method


@pytest.mark.parametrize("name", PROCESSES)
def test_ddim_inversion_undoes_the_step(name):
    process = make_process(name)
    gen = torch.Generator().manual_seed(0)
    x_t, x0 = torch.randn(64, 2, generator=gen, dtype=torch.float64), torch.randn(64, 2, generator=gen, dtype=torch.float64)
    grid = sampling_schedule(process, 8)
    t, s = grid[:-2].repeat(10)[:64], grid[2:].repeat(10)[:64]  # s < t, last s = t_min
    x_s = ddim_step(process, x_t, x0, t, s)
    assert torch.allclose(ddim_x0(process, x_t, x_s, t, s), x0, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("kind", ["uniform", "karras", "logsnr"])
def test_round_grids_nest(name, kind):
    """The student grid of every round is the even points of its teacher's grid (else setup fails)."""
    process = make_process(name)
    method = method_for(process, 1, 32, schedule=kind)
    for rnd in method.plan:
        times = method.round_times(rnd)
        teacher = sampling_schedule(process, rnd.teacher_steps, kind=kind)
        assert torch.equal(times.mid, teacher[1::2])
        assert bool((times.t > times.mid).all() and (times.mid > times.next).all())


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("final", [1, 2, 4])
def test_student_that_outputs_the_target_reproduces_the_teacher_sampler(name, final):
    """The defining property: a student whose x0 is the target at each of its grid points, run
    with DDIM for N steps, gives exactly the teacher's DDIM with 2N steps from the same noise
    (float64, so equal to rounding)."""
    process = make_process(name)
    teacher = exact_teacher(process)
    method = method_for(process, final, 2 * final)
    (rnd,) = method.plan
    grid = method.round_times(rnd).t

    class Oracle(nn.Module):
        def forward(self, x, t, cond=None, **extra):
            index = (grid[None, :] - t.double()[:, None]).abs().argmin(dim=1)
            return method.target(teacher, x, index, rnd)

    student = Denoiser(Oracle(), process, "x0")
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = method.sample(student, noise, steps=final).x0
    x_T = noise * process.sigma(torch.tensor(process.t_max, dtype=torch.float64))
    want = ddim(teacher, x_T, timesteps=sampling_schedule(process, 2 * final)).x0
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", PROCESSES)
def test_constant_teacher_target_is_the_constant(name):
    """DDIM is exact when x0 is constant along the path, so every interval's target is that constant."""
    process = make_process(name)
    mu = torch.tensor([0.7, -1.3], dtype=torch.float64)
    teacher = Denoiser(Constant(mu), process, "x0")
    method = method_for(process, 1, 8)
    for rnd in method.plan:
        index = torch.arange(rnd.student_steps).repeat(8)
        x_t = torch.randn(index.numel(), 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
        assert torch.allclose(method.target(teacher, x_t, index, rnd), mu.expand_as(x_t), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("weighting", ["truncated_snr", "snr_plus_one", "constant"])
def test_loss_is_snr_weighted_x0_error(weighting):
    """Teacher x0 = mu, student x0 = mu + d: per-sample error mean(d^2), weighted by w(SNR(t_i))."""
    process = make_process("flow")
    mu, d = torch.tensor([0.5, 1.0]), torch.tensor([0.3, -0.1])
    roles = Roles({"teacher": Denoiser(Constant(mu), process, "x0"), "student": Denoiser(Constant(mu + d), process, "x0")})
    method = Progressive(Progressive.Options(start_steps=8, weighting=weighting))
    method.student_steps = 4  # one round: 8 -> 4
    method.setup(roles, Plane())
    x0 = torch.randn(512, 2, generator=torch.Generator().manual_seed(4))
    losses = method.loss("student", Batch(noise=torch.zeros(512, 2), x0=x0, generator=torch.Generator().manual_seed(5)), roles)
    # Replay the loss's draws: the interval of each sample comes first.
    index = Batch(noise=torch.zeros(512, 2), generator=torch.Generator().manual_seed(5)).randint(4, 512)
    snr = process.snr(sampling_schedule(process, 4)[:-1][index])
    weight = {"truncated_snr": snr.clamp_min(1), "snr_plus_one": snr + 1, "constant": torch.ones_like(snr)}[weighting]
    expected = weight.mean() * d.double().pow(2).mean()
    assert torch.allclose(losses.total.double(), expected, rtol=1e-5)
    assert torch.allclose(losses.terms["x0_mse"].double(), d.double().pow(2).mean(), rtol=1e-5)


def test_guidance_applies_to_the_original_teacher():
    """A teacher whose x0 is its condition: the guided x0 is u + w (c - u) with u the null condition."""
    process = make_process("flow")
    method = method_for(process, 1, 4, guidance=3.0)
    teacher = Denoiser(CondEcho(), process, "x0")
    cond, null = torch.full((16, 1), 0.5), torch.full((16, 1), -0.25)
    x_t = torch.randn(16, 2, generator=torch.Generator().manual_seed(6))
    rnd = method.plan[0]
    got = method.target(teacher, x_t, torch.zeros(16, dtype=torch.long), rnd, cond, null)
    assert torch.allclose(got, torch.full_like(x_t, -0.25 + 3.0 * (0.5 + 0.25)), atol=1e-6)


def test_round_plan_and_round_at_step():
    plan = round_plan(32, 1, 100)
    assert [r.student_steps for r in plan] == [16, 8, 4, 2, 1]
    assert [r.first_step for r in plan] == [0, 100, 200, 300, 400]
    assert [r.teacher_steps for r in plan] == [32, 16, 8, 4, 2]
    method = method_for(make_process("flow"), 2, 16, steps_per_round=50)
    assert [method.round_at(s).student_steps for s in (0, 49, 50, 99, 100, 149, 10_000)] == [8, 8, 4, 4, 2, 2, 2]
    with pytest.raises(DistillError, match="power of two"):
        round_plan(24, 1, 10)
    with pytest.raises(DistillError, match="start_steps=4 must be"):
        round_plan(4, 4, 10)


class Lin(nn.Module):
    """x0 = w x: a network with one weight to watch copies by."""

    def __init__(self, value: float):
        super().__init__()
        self.f = nn.Linear(2, 2, bias=False)
        nn.init.constant_(self.f.weight, value)

    def forward(self, x, t, cond=None, **extra):
        return self.f(x)


def linear_roles(process) -> Roles:
    return Roles({"teacher": exact_teacher(process), "student": Denoiser(Lin(0.5), process, "x0"),
                  "round_teacher": Denoiser(Lin(-1.0), process, "x0")})


def test_round_teacher_is_filled_on_the_first_step_of_each_round_only():
    process = make_process("flow")
    roles = linear_roles(process)
    method = method_for(process, 1, 8, steps_per_round=3)  # rounds at steps 0 (4), 3 (2), 6 (1)
    weight = lambda name: getattr(roles, name).net.f.weight  # noqa: E731
    method._begin_round(method.round_at(0), 0, roles)
    method._begin_round(method.round_at(2), 2, roles)
    assert torch.all(weight("round_teacher") == -1.0)  # round 0 uses the original teacher
    assert method.round_teacher(roles, method.round_at(2)) is roles.teacher
    method._begin_round(method.round_at(3), 3, roles)
    assert torch.equal(weight("round_teacher"), weight("student"))
    with torch.no_grad():
        weight("student").fill_(2.0)
    method._begin_round(method.round_at(4), 4, roles)  # inside the round: untouched
    assert torch.all(weight("round_teacher") == 0.5)
    # A resumed run (a fresh method) in the middle of a round keeps what the checkpoint restored ...
    resumed = method_for(process, 1, 8, steps_per_round=3)
    resumed._begin_round(resumed.round_at(5), 5, roles)
    assert torch.all(weight("round_teacher") == 0.5)
    # ... and one resumed exactly at a round's first step copies the restored student.
    resumed._begin_round(resumed.round_at(6), 6, roles)
    assert torch.all(weight("round_teacher") == 2.0)
    assert method.round_teacher(roles, method.round_at(6)) is roles.round_teacher


def test_copy_weights_refuses_other_architectures():
    with pytest.raises(DistillError, match="different networks"):
        copy_weights(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))


def test_teacher_inputs_make_it_data_free():
    process = make_process("flow")
    teacher = exact_teacher(process)
    method = method_for(process, 2, 4, inputs="teacher", cache_size=64, cache_batch=32, teacher_steps=4)
    assert not method.needs_data and method_for(process, 2, 4).needs_data
    roles = Roles({"teacher": teacher, "student": Denoiser(Constant(torch.zeros(2)), process, "x0")})
    method.setup(roles, Plane())
    again = method.ode.endpoint(teacher, method.cache.noise[:8], None)
    assert torch.allclose(method.cache.x0[:8], again, atol=1e-6)
    losses = method.loss("student", Batch(noise=torch.zeros(32, 2), generator=torch.Generator().manual_seed(0)), roles)
    assert torch.isfinite(losses.total) and float(losses.terms["round"]) == 0.0


def test_roles_options_and_errors():
    process = make_process("flow")
    one_round = method_for(process, 4, 8)
    assert [r.name for r in one_round.roles()] == ["student"]
    rounds = method_for(process, 1, 8)
    assert [(r.name, r.init) for r in rounds.roles()] == [("student", "auto"), ("round_teacher", "student")]
    with pytest.raises(DistillError, match="weighting"):
        Progressive(Progressive.Options(weighting="snr"))
    with pytest.raises(DistillError, match="inputs"):
        Progressive(Progressive.Options(inputs="noise"))
    with pytest.raises(DistillError, match="steps_per_round"):
        Progressive(Progressive.Options(steps_per_round=0))
    with pytest.raises(DistillError, match="ema.half_life"):
        method = method_for(process, 4, 8, teacher_weights="ema")
        method.setup(Roles({"teacher": exact_teacher(process), "student": exact_teacher(process)}), Plane())
    with pytest.raises(DistillError, match="real data"):
        method = method_for(process, 4, 8)
        roles = Roles({"teacher": exact_teacher(process), "student": Denoiser(Constant(torch.zeros(2)), process, "x0")})
        method.setup(roles, Plane())
        method.loss("student", Batch(noise=torch.zeros(4, 2), generator=torch.Generator().manual_seed(0)), roles)


def test_sample_is_ddim_on_the_round_grid():
    process = make_process("flow")
    teacher = exact_teacher(process)
    method = method_for(process, 4, 8, schedule="logsnr")
    noise = torch.randn(32, 2, generator=torch.Generator().manual_seed(3))
    for steps in (1, 2, 4):
        got = method.sample(teacher, noise, steps=steps)
        want = ddim(teacher, noise, timesteps=sampling_schedule(process, steps, kind="logsnr"))
        assert got.nfe == steps and torch.equal(got.x0, want.x0)


@pytest.mark.parametrize("stop", [3, 5])  # at a round's first step, and inside a round
def test_resume_across_rounds_is_bitwise_identical(tmp_path, fixture_plugins, stop):
    """Rounds at steps 0 (4 -> 2 steps) and 3 (2 -> 1): a run stopped and resumed equals an uninterrupted one."""
    common = ("method_args.start_steps=4", "method_args.steps_per_round=3", "student.init=fresh",
              "ema.half_life=3", "trainer.checkpoint_every=100")
    full = train(tiny(tmp_path / "full", "progressive", "trainer.max_steps=8", *common))
    train(tiny(tmp_path / "part", "progressive", f"trainer.max_steps={stop}", *common))
    resumed = train(tiny(tmp_path / "part", "progressive", "trainer.max_steps=8", *common), resume=True)
    for role in ("student", "student_ema", "round_teacher"):
        a, b = _bytes(full.run_dir / f"{role}.safetensors"), _bytes(resumed.run_dir / f"{role}.safetensors")
        for key in a:
            assert torch.equal(a[key], b[key]), f"{role}.{key} differs after resuming at step {stop}"
    # From step 3 on the round teacher is the student as it was at the end of round 0, not the final one.
    student, teacher = _bytes(full.run_dir / "student.safetensors"), _bytes(full.run_dir / "round_teacher.safetensors")
    assert any(not torch.equal(student[k], teacher[k]) for k in student)

