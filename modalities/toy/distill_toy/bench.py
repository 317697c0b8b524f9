"""The toy benchmark: every method distils the exact ``ring8`` teacher under the same budget.

``distill bench toy`` trains one student per (method, steps) for a fixed number of
steps (full: ``kd`` 20,000, ``dmd2`` 6,000, each about 5-8 minutes on one CPU thread;
``--quick``: a fifth of that), so the rows reproduce bitwise on the same machine and the
students' cosine learning-rate decay spans the whole run. Every row is scored on
50,000 samples (20,000 quick) from the same noise; SW at fewer samples is dominated
by sampling noise. The recipes here are the ones in ``configs/toy/<method>.yaml``.
"""
from __future__ import annotations

from distill.bench import BenchSpec

TEACHER = {"loader": "exact", "process": "flow"}
USUAL = {"sampler": "heun", "steps": 18}  # 35 NFE

METHOD_CONFIGS = {
    "kd": {"method_args": {"pairs": "cached", "cache_size": 65536, "lr": 1e-3}, "ema": {"half_life": 500}},
    "dmd2": {"method_args": {"critic_updates": 2, "student_lr": 1e-3, "critic_lr": 3e-3, "critic_prediction": "flow"},
             "optim": {"student": {"decay": "cosine"}},
             "data": {"batch_size": 512}, "ema": {"half_life": 200}},
}
STEPS = {"kd": 20_000, "dmd2": 6_000}


def benchmark(quick: bool) -> BenchSpec:
    scale = 5 if quick else 1
    return BenchSpec(
        max_steps={method: steps // scale for method, steps in STEPS.items()},
        usual=USUAL,
        teacher_rows=[{"sampler": "euler", "steps": k} for k in (1, 2, 4, 8)],
        base_config={
            "modality_args": {"dataset": "ring8"},
            "teacher": TEACHER,
            "data": {"batch_size": 256},
            "trainer": {"max_minutes": None, "log_every": 200,
                        "checkpoint_every": 0, "cpu_threads": 1},
        },
        method_configs=METHOD_CONFIGS,
        method_steps={"dmd2": [1, 2]},
        n_samples=20_000 if quick else 50_000,
        batch_size=10_000,
        metric_keys=["sliced_wasserstein", "sliced_wasserstein_1", "mmd", "mode_coverage", "mode_weights", "mode_weight_tv", "outlier_fraction"],
    )


def demo_plan():
    """``distill demo --modality toy``: the one-step ``dmd2`` recipe for 3 minutes, decaying over them."""
    from distill.demo import DemoPlan

    return DemoPlan(minutes=3.0, teacher="the exact 8-mode ring mixture teacher", config={
        "modality": "toy",
        "modality_args": {"dataset": "ring8"},
        "method": "dmd2",
        **METHOD_CONFIGS["dmd2"],
        "teacher": TEACHER,
        "teacher_sampler": {"name": USUAL["sampler"], "steps": USUAL["steps"]},
        "student": {"steps": 1},
        # The wall-clock budget ends the run; max_steps only bounds it (the decay follows the budget).
        "trainer": {"max_steps": 1_000_000, "log_every": 500, "checkpoint_every": 5000},
        "eval": {"n_samples": 50_000, "steps": [1], "batch_size": 10_000},
    })
