"""The toy benchmark: every method distils the exact ``ring8`` teacher under the same budget.

``distill bench toy`` trains one student per (method, steps) for a wall-clock budget
(5 minutes in the full run, 20 for the one-step ``dmd2``; 1.5 each with ``--quick``)
on one CPU thread, and reports every row on
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
             "data": {"batch_size": 512}, "ema": {"half_life": 200}},
}


def benchmark(quick: bool) -> BenchSpec:
    minutes = 1.5 if quick else 5.0
    # dmd2's one-step student gets a longer documented budget in the full run: its
    # gradient is a noisy score difference, where kd regresses pairs directly.
    budgets = {} if quick else {"dmd2@1": 20.0}
    return BenchSpec(
        minutes=budgets,
        usual=USUAL,
        teacher_rows=[{"sampler": "euler", "steps": k} for k in (1, 2, 4, 8)],
        base_config={
            "modality_args": {"dataset": "ring8"},
            "teacher": TEACHER,
            "data": {"batch_size": 256},
            "trainer": {"max_steps": 1_000_000, "max_minutes": minutes, "log_every": 200,
                        "checkpoint_every": 0, "cpu_threads": 1},
        },
        method_configs=METHOD_CONFIGS,
        method_steps={"dmd2": [1, 2]},
        n_samples=20_000 if quick else 50_000,
        batch_size=10_000,
        metric_keys=["sliced_wasserstein", "sliced_wasserstein_1", "mmd", "mode_coverage", "mode_weights", "mode_weight_tv", "outlier_fraction"],
    )
