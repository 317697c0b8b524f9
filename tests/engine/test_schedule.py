"""The learning-rate schedule: closed forms, errors, and its use by the engine."""
from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from distill.engine.run import train
from distill.engine.schedule import lr_factor
from distill.errors import DistillError

from tests.engine.test_engine import tiny


def test_constant_and_warmup():
    assert lr_factor(0) == lr_factor(10**6) == 1.0
    assert [lr_factor(k, warmup_steps=4) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_decay_endpoints_and_midpoint(decay):
    kw = dict(decay=decay, total_steps=110, warmup_steps=10, final_fraction=0.1)
    assert lr_factor(9, **kw) == 1.0  # last warm-up step reaches the base rate
    assert lr_factor(10, **kw) == 1.0  # decay starts where warm-up ends
    assert lr_factor(60, **kw) == pytest.approx(0.55)  # both shapes pass through the middle at p = 1/2
    assert lr_factor(110, **kw) == pytest.approx(0.1) == lr_factor(500, **kw)
    quarter = lr_factor(35, **kw)
    expected = 0.1 + 0.9 * (0.5 * (1 + math.cos(math.pi / 4)) if decay == "cosine" else 0.75)
    assert quarter == pytest.approx(expected)


def test_bad_schedules_are_named():
    with pytest.raises(DistillError, match="unknown lr decay 'exp'"):
        lr_factor(0, decay="exp", total_steps=10)
    with pytest.raises(DistillError, match="needs trainer.max_steps"):
        lr_factor(0, decay="cosine", total_steps=None)
    with pytest.raises(DistillError, match="final_lr_fraction"):
        lr_factor(0, decay="cosine", total_steps=10, final_fraction=1.5)


def test_engine_applies_the_schedule_per_role(tmp_path, fixture_plugins):
    run = train(tiny(tmp_path / "run", "dmd2", "trainer.max_steps=8", "method_args.critic_updates=2",
                     "optim.student.decay=linear", "optim.student.final_lr_fraction=0.25",
                     "optim.critic.warmup_steps=4"))
    logs = run.module.last_logs  # the rates used at the last step, 7
    student_lr, critic_lr = run.module.role_specs["student"].lr, run.module.role_specs["critic"].lr
    assert logs["student/lr"] == pytest.approx(student_lr * (0.25 + 0.75 * (1 - 7 / 8)))
    assert logs["critic/lr"] == pytest.approx(critic_lr)  # warmed up, no decay


class _StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, *args) -> None:
        if int(module.distill_step) >= self.step:
            trainer.should_stop = True


def test_resume_mid_decay_is_bitwise_identical(tmp_path, fixture_plugins):
    common = ("trainer.max_steps=12", "trainer.checkpoint_every=100", "optim.student.decay=cosine",
              "optim.critic.decay=linear", "optim.critic.warmup_steps=3")
    full = train(tiny(tmp_path / "full", "dmd2", *common))
    part = train(tiny(tmp_path / "part", "dmd2", *common), extra_callbacks=[_StopAt(5)])
    assert int(part.module.distill_step) == 5
    resumed = train(tiny(tmp_path / "part", "dmd2", *common), resume=True)
    assert int(resumed.module.distill_step) == 12
    for role in ("student", "critic"):
        a, b = load_file(str(full.run_dir / f"{role}.safetensors")), load_file(str(resumed.run_dir / f"{role}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), role


def test_time_budget_drives_the_decay_when_it_ends_first():
    kw = dict(decay="linear", total_steps=1000, final_fraction=0.0)
    assert lr_factor(100, **kw, time_fraction=0.5) == pytest.approx(0.5)  # time is further along than steps
    assert lr_factor(900, **kw, time_fraction=0.5) == pytest.approx(0.1)  # steps are further along
    assert lr_factor(10, **kw, time_fraction=2.0) == 0.0  # past the budget: the final rate
    assert lr_factor(10, time_fraction=0.9) == 1.0  # no decay: time changes nothing
