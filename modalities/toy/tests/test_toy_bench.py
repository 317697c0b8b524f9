"""The toy benchmark spec: every method has the recipe of configs/toy/<method>.yaml and a budget."""
from __future__ import annotations

from pathlib import Path

import pytest

from distill.config import _build_run, load_config
from distill.method import options_from_dict
from distill.plugins import get_manager
from distill_toy.bench import METHOD_CONFIGS, STEPS, benchmark

ROOT = Path(__file__).resolve().parents[3]


def test_every_toy_method_has_a_recipe_and_a_budget():
    manager = get_manager()
    distilling = {e.name for e in manager.methods.entries() if "continuous" in e.obj.kinds and e.obj.needs_teacher}
    assert distilling <= set(METHOD_CONFIGS) and distilling <= set(STEPS)


@pytest.mark.parametrize("method", sorted(METHOD_CONFIGS))
def test_bench_recipes_are_the_committed_configs(method):
    recipe = load_config(ROOT / "configs" / "toy" / f"{method}.yaml")
    spec = benchmark(False)
    bench = _build_run({"modality": "toy", "method": method, **spec.base_config, **METHOD_CONFIGS[method]})
    options = get_manager().method(method).Options
    assert options_from_dict(options, dict(recipe.method_args), method) == options_from_dict(
        options, dict(bench.method_args), method)  # the same options (the yaml may spell out defaults)
    assert recipe.optim == bench.optim and recipe.ema == bench.ema
    assert recipe.student.network == bench.student.network
    assert recipe.data.batch_size == bench.data.batch_size and recipe.trainer.max_steps == STEPS[method]


def test_quick_progressive_still_reaches_one_step():
    quick = benchmark(True)
    rounds = 3  # 8 -> 4 -> 2 -> 1
    per_round = quick.method_configs["progressive"]["method_args"]["steps_per_round"]
    assert rounds * per_round <= quick.max_steps["progressive"]
