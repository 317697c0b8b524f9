"""The digits benchmark: every image method distils the bundled digits teacher.

``distill bench image`` trains one student per (method, steps) -- one per method for the
step-agnostic ones -- for a fixed number of training steps (the documented budgets in
:data:`STEPS`; ``--quick`` trains one student per method for the same 100 steps, and the
methods that regress on teacher pairs use 1,024 of them instead of 4,096), then samples every row -- the
teacher at its usual Heun 18 steps (35 NFE) and with Euler at 1, 2, 4, 8 NFE
included -- from the same class labels (in the digits' class proportions, exactly:
``ImageModality.evaluation_condition``) and noise, and scores it in the bundled
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

COSINE = {"student": {"decay": "cosine"}}
CONSISTENCY = {"num_steps": 40, "schedule": "uniform", "target_ema": 0.95, "parameterization": "edm",
               "distance": "pseudo_huber", "lr": 1e-4}
# the distribution-matching family shares dmd2's rates (docs/modalities/image.md: how they were chosen);
# dmd2's recipe has four critic updates (below); the others train with one (dmd with four reached the
# same 1.4x as dmd2 at 1,000 steps: docs/modalities/image.md, a faster critic)
DM = {"critic_updates": 1, "student_lr": 2e-4, "critic_lr": 4e-4}
PAIRS = {"cache_size": 4096, "cache_batch": 512}  # one 4,096-pair cache (Heun 18), shared on disk by every method
# kd (8x) and dmd (4x) train longer than the rest and regress on the teacher's pairs the whole time: 16,384
# pairs (shared by both) keep them from fitting a small set (docs/modalities/image.md: longer budgets)
LONG_PAIRS = {"cache_size": 16384, "cache_batch": 512}

METHOD_CONFIGS = {
    "kd": {"method_args": {"pairs": "cached", **LONG_PAIRS, "teacher_steps": 18, "lr": 2e-4},
           "optim": COSINE, "ema": {"half_life": 100}},
    # four critic updates per student update: with one, the critic lags and the student is still at
    # 2.2x the teacher's FD after 1,000 steps, with four at 1.47x (docs/modalities/image.md: a faster critic)
    "dmd2": {"method_args": {**DM, "critic_updates": 4}, "optim": COSINE, "ema": {"half_life": 50}},
    # two stages: dmd2 at a quarter of its rate from the finished kd student (WARM_STARTS): regression
    # gives the teacher's recall, a short distribution-matching run adds precision
    # (docs/modalities/image.md: warm start from a kd student)
    "kd+dmd2": {"method": "dmd2", "method_args": {**DM, "critic_updates": 4, "student_lr": 5e-5},
                "optim": COSINE, "ema": {"half_life": 50}},
    "dmd": {"method_args": {**DM, "regression_weight": 0.25, **LONG_PAIRS}, "optim": COSINE, "ema": {"half_life": 50}},
    "vsd": {"method_args": {**DM, "weighting": "sds"}, "optim": COSINE, "ema": {"half_life": 50}},
    "sid": {"method_args": {**DM, "alpha": 1.2}, "optim": COSINE, "ema": {"half_life": 50}},
    "fdistill": {"method_args": {**DM, "divergence": "forward_kl"}, "optim": COSINE, "ema": {"half_life": 50}},
    # adversarial: heads on the frozen teacher's features, judged at low noise (docs/methods/add.md, ladd.md)
    "add": {"method_args": {"student_lr": 2e-4, "discriminator_lr": 4e-4, "features": "teacher", "loss": "hinge",
                            "r1_weight": 1e-5, "disc_time": "uniform", "disc_t_lo": 0.0, "disc_t_hi": 0.1,
                            "distill_weight": 2.5, "weighting": "exponential"},
            "optim": COSINE, "ema": {"half_life": 50}},
    "ladd": {"method_args": {"student_lr": 2e-4, "discriminator_lr": 4e-4, "features": "teacher", "loss": "hinge",
                             "disc_time": "logit_normal", "disc_t_mean": -1.0, "disc_t_std": 1.0, "real": "teacher",
                             **PAIRS},
             "optim": COSINE, "ema": {"half_life": 50}},
    "progressive": {"method_args": {"start_steps": 16, "steps_per_round": 250, "teacher_weights": "ema", "lr": 1e-4},
                    "ema": {"half_life": 50}},
    "reflow": {"method_args": {"pairs": "cached", **PAIRS, "teacher_steps": 18, "lr": 1e-4, "distill_from_step": 600,
                               "distill_teacher_steps": 8, "teacher_weights": "ema"},
               "ema": {"half_life": 50}},
    "cd": {"method_args": {**CONSISTENCY, "skip": 1, "teacher_solver": "heun"}, "optim": COSINE, "ema": {"half_life": 50}},
    "lcm": {"method_args": {**CONSISTENCY, "skip": 2, "teacher_solver": "ddim", "guidance_min": 1.0,
                            "guidance_max": 3.0, "guidance": 1.0},
            "optim": COSINE, "ema": {"half_life": 50}},
    "scm": {"method_args": {"sigma_d": 0.5, "p_mean": -1.0, "p_std": 1.4, "warmup_steps": 200, "lr": 1e-4,
                            "tangent": "jvp"},
            "optim": COSINE, "ema": {"half_life": 100}},
    "meanflow": {"method_args": {"time_sampler": "uniform", "flow_fraction": 0.25, "weight_p": 0.5, **PAIRS, "lr": 1e-4},
                 "optim": COSINE, "ema": {"half_life": 100}},
    "shortcut": {"method_args": {"finest_steps": 16, "bootstrap_fraction": 0.5, **PAIRS, "lr": 1e-4},
                 "optim": COSINE, "ema": {"half_life": 50}},
}
# Documented full budgets (training steps) per "method" or "method@steps". Progressive
# distillation halves 16 steps in rounds of 250: 2 rounds to 4 steps, 3 to 2, 4 to 1.
STEPS = {"kd": 8000, "dmd": 4000, "dmd2": 1000, "dmd2@2": 500, "dmd2@4": 500, "kd+dmd2": 400,
         "vsd": 1000, "sid": 1000, "fdistill": 1000, "add": 1000, "ladd": 1000,
         "progressive": 1000, "progressive@2": 750, "progressive@4": 500,
         "reflow": 1000, "cd": 1000, "lcm": 1000, "scm": 1000, "meanflow": 1000, "shortcut": 1000}
# entry -> the entry whose finished student it starts from (distill.bench.BenchSpec.warm_starts)
WARM_STARTS = {"kd+dmd2": "kd"}
# Step counts per method. Step-agnostic methods (cd, lcm, scm, meanflow, shortcut) train one
# student and sample it at each; the others train one student per step count.
METHOD_STEPS = {"dmd2": [1, 2, 4], "dmd": [1], "kd": [1], "kd+dmd2": [1], "vsd": [1], "sid": [1], "fdistill": [1], "add": [1], "ladd": [1],
                "progressive": [1, 2, 4], "reflow": [1],
                "cd": [1, 2, 4], "lcm": [1, 2, 4], "scm": [1, 2, 4], "meanflow": [1, 2, 4], "shortcut": [1, 2, 4]}
QUICK_STEPS = 100
# The demo's critic: four updates per student update, each on 16 samples instead of 64: the critic's
# compute of one full update, so 5 minutes still buy about 380 student steps, and a critic that keeps
# up (FD 0.0275 on the demo's 2,000 samples, against 0.034 with one update of 64 and 0.058 with four
# of 64; docs/modalities/image.md: the demo's critic).
DEMO_CRITIC = {"critic_updates": 4, "critic_batch_size": 16}
# --quick: fewer teacher pairs (35 NFE each), progressive rounds of 25 steps (4 rounds fit in
# 100), reflow's distillation stage after 60 of them (the full recipe's 60 %), and one
# student per method: the methods that train one student per step count train the 1-step
# one only (step-agnostic students are still sampled at 1, 2 and 4 steps).
QUICK_CONFIGS = {
    **{m: {"method_args": {"cache_size": 1024}} for m in ("kd", "dmd", "meanflow", "shortcut", "ladd")},
    "reflow": {"method_args": {"cache_size": 1024, "distill_from_step": 60}},
    "progressive": {"method_args": {"steps_per_round": 25}},
    # the demo's critic (DEMO_CRITIC): the compute of one full update (four of 64 would add minutes here)
    **{m: {"method_args": DEMO_CRITIC} for m in ("dmd2", "kd+dmd2")},
}
QUICK_METHOD_STEPS = {**METHOD_STEPS, "dmd2": [1], "progressive": [1]}


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
        warm_starts=WARM_STARTS,
        method_steps=QUICK_METHOD_STEPS if quick else METHOD_STEPS,
        n_samples=2000 if quick else 5000,
        seeds=1 if quick else 3,
        std_keys=["fd", "kid", "class_accuracy"],
        batch_size=500,
        metric_keys=["fd", "kid", "precision", "recall", "coverage", "class_accuracy", "paired_psnr"],
        protocol="class labels in the data's proportions",
    )


def demo_plan():
    """``distill demo``: the bundled digits teacher into a one-step ``dmd2`` student in 5 minutes."""
    from distill.demo import DemoPlan

    return DemoPlan(minutes=5.0, teacher="the bundled digits teacher (class-conditional UNet, rectified flow)", config={
        "modality": "image",
        "modality_args": {"dataset": "digits"},
        "method": "dmd2",
        **METHOD_CONFIGS["dmd2"],
        "method_args": {**METHOD_CONFIGS["dmd2"]["method_args"], **DEMO_CRITIC},
        "teacher_sampler": {"name": USUAL["sampler"], "steps": USUAL["steps"]},
        "student": {"steps": 1},
        "data": {"batch_size": 64},
        # The wall-clock budget ends the run; max_steps only bounds it (the decay follows the budget).
        "trainer": {"max_steps": 1_000_000, "log_every": 20, "checkpoint_every": 200},
        # the one-step student, and the same student chained over 2 steps
        "eval": {"n_samples": 2000, "steps": [1, 2], "batch_size": 500},
    })
