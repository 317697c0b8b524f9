"""What an exported student's sidecar says about sampling it: the sampler each method trains for."""
from __future__ import annotations

import pytest
import torch

from distill import make_process
from distill.plugins import get_manager
from distill.samplers import get_sampler


@pytest.mark.parametrize("name", ["kd", "dmd2", "dmd", "progressive", "reflow", "cd", "lcm", "scm", "meanflow", "shortcut"])
def test_sampler_spec_names_a_sampler_that_exists_or_the_method(name):
    method = get_manager().method(name)()
    method.process = make_process("flow")
    spec = method.sampler_spec(2)
    assert spec["steps"] == 2
    if spec["name"] == "method":
        assert spec["method"] == name  # only the method's own sample() reproduces the student
    else:
        get_sampler(spec["name"])  # a registered sampler
        assert torch.allclose(torch.tensor(spec["timesteps"], dtype=torch.float64),
                              method.student_timesteps(2).double())


def test_each_method_names_the_sampler_it_trains_for():
    methods = get_manager()
    expected = {"dmd2": "multistep", "scm": "multistep", "progressive": "ddim", "reflow": "euler", "cd": "method",
                "meanflow": "method", "shortcut": "method"}
    for name, sampler in expected.items():
        method = methods.method(name)()
        method.process = make_process("flow")
        assert method.sampler_spec(1)["name"] == sampler, name
