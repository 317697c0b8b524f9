"""The digits benchmark spec, the demo plan, the image recipes and the bundled teacher."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill.config import _build_run, load_config
from distill.engine.run import build_modality, load_teacher
from distill.evaluation import noise_and_cond, teacher_sample_fn
from distill_image.bench import METHOD_CONFIGS, STEPS, benchmark, demo_plan
from distill_image.metrics import image_metrics
from distill_image.modality import TEACHER_FILE, ImageModality

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = sorted((ROOT / "configs" / "image").glob("*.yaml"))


def test_two_stage_entries_start_from_a_benchmarked_student():
    """kd+dmd2: dmd2 from the benchmark's own kd student (its recipe's student.init is kd's run folder)."""
    full = benchmark(False)
    assert full.warm_starts == {"kd+dmd2": "kd"} and full.method_configs["kd+dmd2"]["method"] == "dmd2"
    kd = load_config(ROOT / "configs" / "image" / "kd.yaml")
    second = load_config(ROOT / "configs" / "image" / "kd+dmd2.yaml")
    assert second.student.init == f"{kd.output.dir}/student_ema.safetensors"


def test_full_and_quick_specs():
    full, quick = benchmark(False), benchmark(True)
    assert full.usual == {"sampler": "heun", "steps": 18}
    assert [r["steps"] for r in full.teacher_rows] == [1, 2, 4, 8]
    # The FD protocol: >= 5,000 samples under 3 noise seeds, with fd_std.
    assert full.n_samples >= 5000 and full.seeds == 3 and "fd" in full.std_keys
    assert full.method_steps["dmd2"] == [1, 2, 4]
    assert full.max_steps == STEPS
    assert len(set(quick.max_steps.values())) == 1  # --quick: the same short budget for every method
    assert quick.n_samples < full.n_samples and quick.seeds == 1
    assert ImageModality.benchmark(True).max_steps == quick.max_steps


def test_every_image_method_has_a_benchmark_recipe_and_budget():
    """A method that binds to images but has no recipe here would run on defaults in `distill bench image`."""
    from distill.plugins import get_manager

    manager = get_manager()
    distilling = {e.name for e in manager.methods.entries() if "continuous" in e.obj.kinds and e.obj.needs_teacher}
    assert distilling <= set(METHOD_CONFIGS) and distilling <= set(STEPS)
    assert {"progressive", "cd", "scm", "meanflow"} <= distilling
    full = benchmark(False)
    for m in distilling:
        assert all(full.max_steps.get(f"{m}@{k}", full.max_steps.get(m)) for k in full.method_steps.get(m, [1]))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipes_validate(path):
    cfg = load_config(path)
    assert cfg.modality == "image"
    assert {p.stem for p in CONFIGS} >= {"teacher", "dmd2", "kd"}


@pytest.mark.parametrize("method", sorted(METHOD_CONFIGS))
def test_bench_recipes_are_the_committed_configs(method):
    """The benchmark trains what configs/image/<method>.yaml documents (method options, optimiser, EMA)."""
    recipe = load_config(ROOT / "configs" / "image" / f"{method}.yaml")
    bench = _build_run({"modality": "image", "method": method, **METHOD_CONFIGS[method]})
    assert recipe.method == bench.method  # a two-stage entry ("kd+dmd2") names the method it trains
    assert recipe.method_args == bench.method_args
    assert recipe.optim == bench.optim and recipe.ema == bench.ema
    assert recipe.data.batch_size == 64 and recipe.trainer.max_steps == STEPS[method]


def test_demo_plan_is_a_valid_one_step_dmd2_run():
    plan = ImageModality.demo_plan()
    assert plan.minutes <= 5.0  # the budget for distillation on this machine
    cfg = _build_run({**plan.config, "trainer": {**plan.config["trainer"], "max_minutes": plan.minutes}})
    assert cfg.method == "dmd2" and cfg.student.steps == 1 and cfg.eval.steps == [1, 2]
    assert plan.config == demo_plan().config


def test_bundled_teacher_is_small_documented_and_draws_the_asked_digit():
    assert TEACHER_FILE.is_file(), "the bundled digits teacher is missing"
    assert TEACHER_FILE.stat().st_size < 5_000_000
    side = json.loads(TEACHER_FILE.with_suffix(".json").read_text())
    assert side["process"]["name"] == "flow" and side["prediction"] == "flow"
    cfg = load_config(ROOT / "configs" / "image" / "dmd2.yaml")
    modality = build_modality(cfg)
    teacher = load_teacher(cfg, modality).eval()
    noise, cond = noise_and_cond(modality, 200, seed=7)
    with torch.no_grad():
        samples = teacher_sample_fn(teacher, "heun", 18)(noise, cond).x0
    metrics = image_metrics(samples, modality.reference(200), cond=cond)
    # The classifier is 99.7 % accurate on held-out digits; a working teacher draws the asked
    # digit nearly always (measured 0.97+ on 5,000 samples); 200 samples put the 95 % interval
    # of a 0.97 rate at +-0.024, so 0.9 fails only for a broken teacher.
    assert metrics["class_accuracy"] >= 0.9


@pytest.mark.slow
def test_dmd2_recipe_end_to_end_report(tmp_path):
    """A few steps of configs/image/dmd2.yaml, then the report: the pipeline, not the quality."""
    from distill.engine.run import train
    from distill.report import evaluate_run

    cfg = load_config(ROOT / "configs" / "image" / "dmd2.yaml", [
        f"output.dir={tmp_path / 'run'}", "trainer.max_steps=3", "trainer.progress=false",
        "data.batch_size=8", "eval.n_samples=64", "eval.batch_size=64"])
    run = train(cfg)
    rows = evaluate_run(run.run_dir, progress=False)
    assert [(r["method"], r["nfe"]) for r in rows] == [("teacher", 35), ("teacher", 1), ("dmd2", 1), ("dmd2", 2)]
    for r in rows:
        assert {"fd", "kid", "class_accuracy"} <= set(r)
    assert all("paired_psnr" in r for r in rows[1:])  # against the teacher's 35-NFE sample from the same noise
    report = (run.run_dir / "report.md").read_text()
    assert "samples/comparison.png" in report and (run.run_dir / "samples" / "comparison.png").is_file()
