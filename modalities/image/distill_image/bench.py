"""The digits benchmark: every image method distils the bundled digits teacher.

``distill bench image`` trains one student per (method, steps) for a fixed number of
training steps (the documented budgets in :data:`STEPS`: ``kd`` 600, ``dmd`` 1,000,
``dmd2`` 1,000 at one step and 500 at 2 and 4; ``--quick`` gives every method the same
120 steps, and ``kd``/``dmd`` 1,024 teacher pairs instead of 4,096), then samples every row -- the
teacher at its usual Heun 18 steps (35 NFE) and with Euler at 1, 2, 4, 8 NFE
included -- from the same class labels and noise, and scores it in the bundled
digits classifier's feature space against all 1,797 digits (FD, KID, precision,
recall, coverage, class accuracy) and against the teacher's own sample from the same
noise (paired PSNR). FD at a few thousand samples moves by a few units between noise
draws, so the full run scores 5,000 samples under each of 3 noise seeds and reports
the mean and ``fd_std``; ``--quick`` scores 2,000 samples under one seed.

The recipes are the ones in ``configs/image/<method>.yaml``.
"""
from __future__ import annotations

from distill.bench import BenchSpec, deep_merge

USUAL = {"sampler": "heun", "steps": 18}  # 35 NFE

METHOD_CONFIGS = {
    "kd": {"method_args": {"pairs": "cached", "cache_size": 4096, "cache_batch": 512, "teacher_steps": 18, "lr": 2e-4},
           "optim": {"student": {"decay": "cosine"}}, "ema": {"half_life": 100}},
    "dmd2": {"method_args": {"critic_updates": 1, "student_lr": 2e-4, "critic_lr": 4e-4},
             "optim": {"student": {"decay": "cosine"}}, "ema": {"half_life": 50}},
    "dmd": {"method_args": {"critic_updates": 1, "student_lr": 2e-4, "critic_lr": 4e-4, "regression_weight": 0.25,
                            "cache_size": 4096, "cache_batch": 512},
            "optim": {"student": {"decay": "cosine"}}, "ema": {"half_life": 50}},
}
# Documented full budgets (training steps) per "method" or "method@steps".
STEPS = {"kd": 600, "dmd": 1000, "dmd2": 1000, "dmd2@2": 500, "dmd2@4": 500}
QUICK_STEPS = 120
QUICK_CONFIGS = {m: {"method_args": {"cache_size": 1024}} for m in ("kd", "dmd")}  # fewer teacher pairs: 35 NFE each


def benchmark(quick: bool) -> BenchSpec:
    budgets = {m: QUICK_STEPS for m in STEPS} if quick else dict(STEPS)
    configs = {m: deep_merge(c, QUICK_CONFIGS.get(m, {})) for m, c in METHOD_CONFIGS.items()} if quick else METHOD_CONFIGS
    return BenchSpec(
        max_steps=budgets,
        usual=USUAL,
        teacher_rows=[{"sampler": "euler", "steps": k} for k in (1, 2, 4, 8)],
        base_config={
            "modality_args": {"dataset": "digits"},
            "data": {"batch_size": 64},
            "trainer": {"max_minutes": None, "log_every": 20, "checkpoint_every": 0},
        },
        method_configs=configs,
        method_steps={"dmd2": [1, 2, 4], "dmd": [1], "kd": [1]},
        n_samples=2000 if quick else 5000,
        seeds=1 if quick else 3,
        std_keys=["fd", "kid", "class_accuracy"],
        batch_size=500,
        metric_keys=["fd", "kid", "precision", "recall", "coverage", "class_accuracy", "paired_psnr"],
    )


def demo_plan():
    """``distill demo``: the bundled digits teacher into a one-step ``dmd2`` student in 5 minutes."""
    from distill.demo import DemoPlan

    return DemoPlan(minutes=5.0, teacher="the bundled digits teacher (class-conditional UNet, rectified flow)", config={
        "modality": "image",
        "modality_args": {"dataset": "digits"},
        "method": "dmd2",
        **METHOD_CONFIGS["dmd2"],
        "teacher_sampler": {"name": USUAL["sampler"], "steps": USUAL["steps"]},
        "student": {"steps": 1},
        "data": {"batch_size": 64},
        # The wall-clock budget ends the run; max_steps only bounds it (the decay follows the budget).
        "trainer": {"max_steps": 1_000_000, "log_every": 20, "checkpoint_every": 200},
        # the one-step student, and the same student chained over 2 steps
        "eval": {"n_samples": 2000, "steps": [1, 2], "batch_size": 500},
    })
