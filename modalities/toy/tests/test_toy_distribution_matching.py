"""Issue 5's toy bar for the data-free distribution-matching methods: a one-step student of
the exact ring8 teacher within 2x the teacher's sliced Wasserstein at 35 NFE.

The fresh critic must keep up with the student: with 2 critic updates per student update
(the benchmark recipes in configs/toy/) `dmd2` needs about 6,000 steps at batch 512; with 4
updates and twice the rates it gets there in 3,000 at batch 256. Measured before writing
these tests (one CPU thread, 20,000 samples, teacher 0.0468; trainer seed 0, and seed 1
where a cell has two values):

| method   | critic updates | rates         | steps | SW_2 ratio  | mode TV     | training |
|----------|----------------|---------------|-------|-------------|-------------|----------|
| dmd2     | 2              | 1e-3 / 3e-3   | 3,000 | 2.84        | 0.17        | 144 s    |
| dmd2     | 2              | 2e-3 / 6e-3   | 3,000 | 2.37        | 0.09        | 144 s    |
| dmd2     | 4              | 2e-3 / 6e-3   | 1,500 | 3.31        | 0.18        | 118 s    |
| dmd2     | 4              | 2e-3 / 6e-3   | 3,000 | 1.35 / 1.44 | 0.02 / 0.02 | 240 s    |
| vsd      | 4              | 2e-3 / 6e-3   | 3,000 | 1.54 / 1.59 | 0.02 / 0.02 | 230 s    |
| fdistill | 4              | 4e-3 / 1.2e-2 | 3,000 | 1.54 / 2.75 | 0.03 / 0.13 | 570 s    |
| sid      | 4              | 1e-3 / 3e-3, alpha 0.5 | 3,000 | 2.43 | 0.06      | 256 s    |
| sid      | 4              | the same, 6,000 steps  | 6,000 | 2.33 | 0.07      | 488 s    |
| sid      | 4, batch 512   | 1e-3 / 3e-3, alpha 0.5 | 3,000 | 1.75 / 2.56 | 0.04 / 0.06 | 400 s |

`fdistill` and `sid` are not reliably within 2x (seed 0 passes, seed 1 does not), so neither
has a test here yet (docs/methods/fdistill.md, docs/methods/sid.md). `make test` runs `dmd2`;
`vsd` is marked `long`: with it the suite would exceed its 20-minute budget on this 2-core
machine (18 min 53 s here), so `make test-long` runs it.
"""
from __future__ import annotations

import pytest

from test_toy_methods import _run, _scores, assert_one_step_within_bar

pytestmark = pytest.mark.slow

FAST_CRITIC = {"critic_updates": 4, "student_lr": 2e-3, "critic_lr": 6e-3, "critic_prediction": "flow"}


@pytest.mark.parametrize("method", ["dmd2", pytest.param("vsd", marks=pytest.mark.long)])
def test_one_step_student_within_2x_of_the_teacher(tmp_path, method):
    run = _run(tmp_path, method, 3000, FAST_CRITIC, optim={"student": {"decay": "cosine"}})
    s = _scores(run)
    assert_one_step_within_bar(s, bar=2.0)
    assert s["student_1"]["mode_weight_tv"] < 0.1, s["student_1"]
