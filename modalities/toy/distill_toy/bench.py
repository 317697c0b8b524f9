"""The toy benchmark: every method distils the exact ``ring8`` teacher under the same budget.

``distill bench toy`` trains one student per (method, steps) -- one per method for the
step-agnostic ones -- for a fixed number of steps (full: :data:`STEPS`, e.g. ``kd``
20,000 and ``dmd2`` 6,000, each about 5-8 minutes on one CPU thread; ``--quick``: a
fifth of that), so the rows reproduce bitwise on the same machine and the
students' cosine learning-rate decay spans the whole run. Every row is scored on
50,000 samples (20,000 quick) from the same noise; SW at fewer samples is dominated
by sampling noise. The recipes here are the ones in ``configs/toy/<method>.yaml``.
"""
from __future__ import annotations

from distill.bench import BenchSpec, deep_merge

TEACHER = {"loader": "exact", "process": "flow"}
USUAL = {"sampler": "heun", "steps": 18}  # 35 NFE

COSINE = {"student": {"decay": "cosine"}}
SMOOTH_TIME = {"network": {"time_scale": 10.0}}  # students whose loss differentiates the time embedding
# dmd2's toy recipe, shared by the distribution-matching family (sid needs lower rates)
DM = {"critic_updates": 2, "student_lr": 1e-3, "critic_lr": 3e-3, "critic_prediction": "flow"}
# add and ladd: the exact teacher has no layers, so a fresh critic MLP (128 wide) supplies the
# discriminator's features; a smooth (R1), two-updates-per-step discriminator over every noise
# level gets the mode weights right
ADVERSARIAL = {"features": "critic", "critic_network": {"hidden": 128}, "discriminator_updates": 2,
               "student_lr": 2e-3, "discriminator_lr": 3e-3, "critic_lr": 3e-3, "loss": "non_saturating",
               "r1_weight": 0.1, "r1_every": 4, "disc_time": "uniform", "disc_t_lo": 0.0, "disc_t_hi": 1.0}
CONSISTENCY = {"num_steps": 40, "schedule": "uniform", "target_ema": 0.95, "parameterization": "edm",
               "sigma_data": 0.5, "distance": "mse", "lr": 1e-3, "sample_schedule": "karras"}

METHOD_CONFIGS = {
    "kd": {"method_args": {"pairs": "cached", "cache_size": 65536, "lr": 1e-3}, "ema": {"half_life": 500}},
    "dmd2": {"method_args": dict(DM), "optim": COSINE, "data": {"batch_size": 512}, "ema": {"half_life": 200}},
    "vsd": {"method_args": {**DM, "weighting": "sds"},
            "optim": COSINE, "data": {"batch_size": 512}, "ema": {"half_life": 200}},
    "sid": {"method_args": {**DM, "student_lr": 1e-4, "critic_lr": 3e-4, "alpha": 1.0},
            "optim": COSINE, "data": {"batch_size": 512}, "ema": {"half_life": 200}},
    "fdistill": {"method_args": {**DM, "divergence": "forward_kl"},
                 "optim": COSINE, "data": {"batch_size": 512}, "ema": {"half_life": 200}},
    "dmd": {"method_args": {**DM, "regression_weight": 1.0, "cache_size": 32768, "cache_batch": 32768},
            "optim": COSINE, "ema": {"half_life": 200}},
    "progressive": {"method_args": {"start_steps": 8, "steps_per_round": 1200, "student_prediction": "flow",
                                    "teacher_weights": "ema", "lr": 2e-3},
                    "ema": {"half_life": 200}},
    "reflow": {"method_args": {"pairs": "cached", "cache_size": 32768, "teacher_sampler": "heun", "teacher_steps": 18,
                               "student_prediction": "flow", "lr": 2e-3},
               "ema": {"half_life": 200}},
    "cd": {"method_args": {**CONSISTENCY, "skip": 1, "teacher_solver": "heun", "sampler": "consistency"},
           "ema": {"half_life": 200}},
    "lcm": {"method_args": {**CONSISTENCY, "skip": 1, "teacher_solver": "ddim", "guidance_min": 1.0,
                            "guidance_max": 4.0, "guidance": 2.0},
            "ema": {"half_life": 200}},
    "scm": {"method_args": {"sigma_d": 1.4, "p_mean": -1.5, "p_std": 1.4, "warmup_steps": 500, "lr": 2e-3},
            "student": {"network": {"hidden": 128, "time_scale": 10.0}}, "optim": COSINE, "ema": {"half_life": 200}},
    "meanflow": {"method_args": {"time_sampler": "uniform", "flow_fraction": 0.25, "weight_p": 0.5,
                                 "cache_size": 65536, "lr": 1e-3},
                 "student": SMOOTH_TIME, "optim": COSINE, "ema": {"half_life": 200}},
    "shortcut": {"method_args": {"finest_steps": 16, "bootstrap_fraction": 0.5, "cache_size": 65536, "lr": 1e-3},
                 "student": SMOOTH_TIME, "optim": COSINE, "ema": {"half_life": 50}},
    "add": {"method_args": {**ADVERSARIAL, "distill_weight": 0.05, "distill_t_hi": 0.3},
            "optim": COSINE, "data": {"batch_size": 512}, "ema": {"half_life": 300}},
    "ladd": {"method_args": {**ADVERSARIAL, "real": "teacher", "cache_size": 32768, "cache_batch": 32768},
             "optim": COSINE, "data": {"batch_size": 512}, "ema": {"half_life": 300}},
}
STEPS = {"kd": 20_000, "dmd2": 6_000, "vsd": 6_000, "sid": 6_000, "fdistill": 6_000, "dmd": 1_500, "progressive": 3_600, "reflow": 3_000, "cd": 4_000, "lcm": 4_000,
         "scm": 3_000, "meanflow": 6_000, "shortcut": 6_000, "add": 3_000, "ladd": 3_000}
# one-step methods: 1; the one-step map of dmd2 chained over 2; step-agnostic students at 1, 2, 4;
# add and ladd: a one-step and a 4-step student
METHOD_STEPS = {"dmd2": [1, 2], "reflow": [1, 2, 4], "cd": [1, 2, 4], "lcm": [1, 2, 4], "scm": [1, 2, 4],
                "meanflow": [1, 2, 4], "shortcut": [1, 2, 4], "add": [1, 4], "ladd": [1, 4]}


def benchmark(quick: bool) -> BenchSpec:
    scale = 5 if quick else 1
    configs = METHOD_CONFIGS
    if quick:  # progressive's rounds shrink with the budget, so the quick run still reaches one step
        configs = {**configs, "progressive": deep_merge(configs["progressive"], {
            "method_args": {"steps_per_round": configs["progressive"]["method_args"]["steps_per_round"] // scale}})}
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
        method_configs=configs,
        method_steps=METHOD_STEPS,
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
