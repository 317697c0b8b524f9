"""End-to-end engine tests on the fixture modality 'mix' (exact mixture teacher)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.config import load_config
from distill.engine.module import NonFiniteError
from distill.engine.run import open_run, train
from distill.errors import DistillError

ROOT = Path(__file__).resolve().parents[2]


def tiny(tmp_path: Path, method: str = "kd", *extra: str):
    overrides = [
        "modality=mix", f"method={method}", "teacher.loader=mix_exact", f"output.dir={tmp_path}",
        "trainer.max_steps=10", "trainer.progress=false", "trainer.checkpoint_every=5", "trainer.log_every=1",
        "data.batch_size=64", "eval.n_samples=256", "teacher_sampler.steps=8",
    ]
    if method == "kd":
        overrides += ["method_args.cache_size=512", "method_args.cache_batch=512", "method_args.teacher_steps=8"]
    return load_config(None, overrides + list(extra))


def test_train_writes_run_directory(tmp_path, fixture_plugins):
    run = train(tiny(tmp_path / "run", "kd", "ema.half_life=5"))
    d = run.run_dir
    for name in ("config.yaml", "checkpoints/last.ckpt", "student.safetensors", "student.json",
                 "student_ema.safetensors", "metrics.jsonl"):
        assert (d / name).is_file(), name
    assert int(run.module.distill_step) == 10
    ckpt = torch.load(d / "checkpoints/last.ckpt", weights_only=True)
    assert not any(k.startswith("teacher") or "._frozen" in k for k in ckpt["state_dict"])
    assert any(k.startswith("trained.student.") for k in ckpt["state_dict"])
    sidecar = json.loads((d / "student.json").read_text())
    assert sidecar["prediction"] == "x0" and sidecar["process"]["name"] == "flow"
    assert sidecar["step"] == 10 and sidecar["sampler"]["steps"] == 1
    opened = open_run(d)
    noise = torch.randn(5, 2)
    direct = run.module.student_ema(noise, torch.ones(5))
    assert torch.allclose(opened.student(noise, torch.ones(5)), direct)
    lines = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 10 and "student/total" in lines[-1]


def test_teacher_stays_frozen(tmp_path, fixture_plugins):
    run = train(tiny(tmp_path / "run", "dmd2", "trainer.max_steps=3"))
    assert all(not p.requires_grad for p in run.module.teacher.parameters())
    state = run.module.state_dict()
    assert not any(k.startswith("teacher") for k in state)


def test_two_time_scale_schedule_counts_optimizer_steps(tmp_path, fixture_plugins):
    run = train(tiny(tmp_path / "run", "dmd2", "trainer.max_steps=4", "method_args.critic_updates=3"))
    critic_opt, student_opt = None, None
    for name, index in run.module._opt_index.items():
        state = run.module.optimizers()[index].optimizer.state if hasattr(run.module.optimizers()[index], "optimizer") else None
        step = next(iter(state.values()))["step"]
        if name == "critic":
            critic_opt = float(step)
        else:
            student_opt = float(step)
    assert (critic_opt, student_opt) == (12.0, 4.0)
    assert int(run.module.distill_step) == 4


def test_a_method_sizes_each_phases_batch(tmp_path, fixture_plugins, monkeypatch):
    """dmd2's critic_batch_size: the critic phases draw that many samples, the student phase data.batch_size."""
    from distill.methods.dmd2 import DMD2

    sizes = []
    original = DMD2.loss
    monkeypatch.setattr(DMD2, "loss", lambda self, phase, batch, roles: sizes.append((phase, batch.size))
                        or original(self, phase, batch, roles))
    train(tiny(tmp_path / "run", "dmd2", "trainer.max_steps=2", "method_args.critic_updates=2",
               "method_args.critic_batch_size=16"))
    assert sizes == [("critic", 16), ("critic", 16), ("student", 64)] * 2
    with pytest.raises(DistillError, match="critic_batch_size must be at least 1"):
        train(tiny(tmp_path / "bad", "dmd2", "method_args.critic_batch_size=0"))


def _bytes(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_resume_is_bitwise_identical(tmp_path, fixture_plugins):
    common = ("ema.half_life=3", "trainer.checkpoint_every=100")
    full = train(tiny(tmp_path / "full", "dmd2", "trainer.max_steps=12", *common))
    train(tiny(tmp_path / "part", "dmd2", "trainer.max_steps=6", *common))
    resumed = train(tiny(tmp_path / "part", "dmd2", "trainer.max_steps=12", *common), resume=True)
    assert int(resumed.module.distill_step) == 12
    for role in ("student", "critic", "student_ema"):
        a, b = _bytes(full.run_dir / f"{role}.safetensors"), _bytes(resumed.run_dir / f"{role}.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{role}.{key} differs after resume"


def test_resume_without_checkpoint_and_rerun_into_existing_dir_fail(tmp_path, fixture_plugins):
    from distill.errors import DistillError

    with pytest.raises(DistillError, match="no checkpoint"):
        train(tiny(tmp_path / "none"), resume=True)
    train(tiny(tmp_path / "once", "kd", "trainer.max_steps=2"))
    with pytest.raises(DistillError, match="already holds a run"):
        train(tiny(tmp_path / "once", "kd", "trainer.max_steps=2"))


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path, fixture_plugins):
    cfg = tiny(tmp_path / "run", "nan_at", "method_args.nan_step=7")
    with pytest.raises(NonFiniteError) as caught:
        train(cfg)
    message = str(caught.value)
    assert "step 7" in message and "'student'" in message and "last.ckpt" in message
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    assert int(ckpt["state_dict"]["distill_step"]) == 5
    weights = _bytes(tmp_path / "run/student.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert json.loads((tmp_path / "run/student.json").read_text())["step"] == 5


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_process_at_double_batch(tmp_path, strategy):
    """2 gloo ranks x batch 32 == 1 process x batch 64: same samples (global draws), averaged gradients.

    ``ddp`` all-reduces each role's gradients; ``fsdp`` shards each role with FSDP2 and
    reduce-scatters them. Both must give the single-process result."""
    env = dict(os.environ, DISTILL_PLUGIN_MODULES="tests.fixtures.mixture_plugin",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    def run(out: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "distill.cli", "train", str(ROOT / "tests/fixtures/ddp.yaml"),
               f"output.dir={out}", *extra, "--no-eval"]
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]

    run(tmp_path / "ddp", "trainer.devices=2", f"trainer.strategy={strategy}", "data.batch_size=32")
    run(tmp_path / "single", "data.batch_size=64")
    if strategy == "ddp":  # replicated weights: every rank must hold the same ones
        records = [json.loads(x) for x in (tmp_path / "ddp/metrics.jsonl").read_text().splitlines()]
        assert any(r.get("ranks_in_sync") is True for r in records)
    for role in ("student", "critic"):
        a, b = _bytes(tmp_path / f"ddp/{role}.safetensors"), _bytes(tmp_path / f"single/{role}.safetensors")
        for key in a:
            # Same math in a different summation order: float32 round-off, amplified a little by Adam.
            assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), f"{role}.{key}"


def test_dmd2_with_gan_head_and_multistep_student(tmp_path, fixture_plugins):
    from distill.evaluation import generate, noise_and_cond, student_sample_fn

    run = train(tiny(tmp_path / "run", "dmd2", "trainer.max_steps=3", "method_args.gan_weight=0.01", "student.steps=2"))
    assert (run.run_dir / "discriminator.safetensors").is_file()
    logs = run.module.last_logs
    assert "critic/discriminator" in logs and "student/gan" in logs and "discriminator/grad_norm" in logs
    opened = open_run(run.run_dir)
    noise, cond = noise_and_cond(opened.modality, 8, seed=0)
    gen = generate(student_sample_fn(opened.method, opened.student, 2), noise, cond, batch_size=8, progress=False)
    assert gen.nfe == 2 and gen.samples.shape == (8, 2) and torch.isfinite(gen.samples).all()


def test_trained_teacher_exports_and_loads_as_a_teacher(tmp_path, fixture_plugins):
    """`diffusion` trains a model from data; its export is a teacher for the safetensors loader."""
    teacher_run = train(load_config(None, [
        "modality=mix", "method=diffusion", f"output.dir={tmp_path / 'teacher'}", "trainer.max_steps=5",
        "trainer.progress=false", "data.batch_size=64", "method_args.prediction=eps", "method_args.process=vp"]))
    exported = teacher_run.run_dir / "student.safetensors"
    side = json.loads(exported.with_suffix(".json").read_text())
    assert side["prediction"] == "eps" and side["process"]["name"] == "vp"
    student_run = train(tiny(tmp_path / "student", "kd", "teacher.loader=safetensors", f"teacher.path={exported}",
                             "trainer.max_steps=0"))
    teacher = student_run.module.teacher
    assert teacher.prediction == "eps" and teacher.process.name == "vp"
    # student init "auto" copies the teacher's weights when the teacher has any
    for a, b in zip(teacher.net.parameters(), student_run.module.trained["student"].net.parameters()):
        assert torch.equal(a, b)


def test_student_warm_starts_from_a_previous_runs_export(tmp_path, fixture_plugins):
    """`student.init: FILE.safetensors`: a kd student continues as a dmd2 student, weights intact."""
    first = train(tiny(tmp_path / "kd", "kd", "ema.half_life=5"))
    exported = first.run_dir / "student_ema.safetensors"
    second = train(tiny(tmp_path / "dmd2", "dmd2", f"student.init={exported}", "ema.half_life=5", "trainer.max_steps=0"))
    weights = _bytes(exported)
    student = second.module.trained["student"].net.state_dict()
    assert weights.keys() == student.keys()
    assert all(torch.equal(weights[k], student[k]) for k in weights)
    # the EMA starts from the warm-started weights, not from a fresh network
    assert all(torch.equal(weights[k], second.module.student_ema.net.state_dict()[k]) for k in weights)


def test_warm_start_refuses_a_missing_file_and_another_process(tmp_path, fixture_plugins):
    with pytest.raises(DistillError, match="does not exist"):
        train(tiny(tmp_path / "a", "dmd2", f"student.init={tmp_path / 'nope.safetensors'}", "trainer.max_steps=0"))
    first = train(tiny(tmp_path / "kd", "kd"))
    exported = first.run_dir / "student.safetensors"
    side = json.loads(exported.with_suffix(".json").read_text())
    side["process"] = {**side["process"], "name": "vp"}
    exported.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(DistillError, match="same teacher"):
        train(tiny(tmp_path / "b", "dmd2", f"student.init={exported}", "trainer.max_steps=0"))
