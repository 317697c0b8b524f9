"""shortcut distils the exact ring8 teacher into one student for 1, 2 and 4 steps (fixed seeds).

The run is ``_run`` of test_toy_methods (batch 256, seed 0) plus the settings of
``configs/toy/shortcut.yaml`` that ``_run`` has no argument for: the student MLP's time embedding
at ``time_scale: 10``, a cosine decay of its learning rate, and an EMA half-life of 50 steps (the
EMA makes the self-consistency targets, and its lag adds up over the dyadic levels: with
half-life 200 the one-step SW after 2,000 steps was 0.125, with 50 it was 0.065).
"""
from __future__ import annotations

import pytest

import test_toy_methods as base
from test_toy_methods import _scores

RECIPE = {"student": {"network": {"time_scale": 10.0}}, "optim": {"student": {"decay": "cosine"}}}
SHORTCUT_RECIPE = {**RECIPE, "ema": {"half_life": 50}}


def run_with(monkeypatch, tmp_path, method: str, steps: int, method_args: dict, overrides: dict):
    """``base._run`` with ``overrides`` merged into its config (one level deep)."""
    build = base._build_run

    def build_with(data: dict):
        for key, value in overrides.items():
            data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
        return build(data)

    monkeypatch.setattr(base, "_build_run", build_with)
    return base._run(tmp_path, method, steps, method_args)


@pytest.mark.slow
def test_shortcut_student_within_2x_of_teacher_and_improves_with_steps(monkeypatch, tmp_path):
    args = {"finest_steps": 16, "bootstrap_fraction": 0.5, "cache_size": 32768, "lr": 1e-3}
    run = run_with(monkeypatch, tmp_path, "shortcut", 2000, args, SHORTCUT_RECIPE)
    s = _scores(run, student_steps=(1, 2, 4))
    teacher, one_nfe = s["teacher_heun_35"]["sliced_wasserstein"], s["teacher_euler_1"]["sliced_wasserstein"]
    sw = {k: s[f"student_{k}"]["sliced_wasserstein"] for k in (1, 2, 4)}
    print(f"SW_2: teacher (35 NFE) {teacher:.4f}, 1-NFE teacher {one_nfe:.4f}, student by steps {sw}")
    assert one_nfe > 10 * teacher  # the negative control fails
    assert sw[1] < 2 * teacher, (sw, teacher)
    assert sw[4] <= sw[1], sw  # quality holds or improves from 1 to 4 steps
    assert all(s[f"student_{k}"]["mode_coverage"] == 1.0 for k in (1, 2, 4))
