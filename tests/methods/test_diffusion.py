"""The teacher-training method ``diffusion``: process arguments reach the process it trains under."""
from __future__ import annotations

import pytest
import torch

from distill.config import build_dataclass
from distill.errors import DistillError
from distill.methods.diffusion import Diffusion
from distill.process import make_betas


def _method(**values) -> Diffusion:
    return Diffusion(build_dataclass(Diffusion.Options, values, "method_args"))


def test_process_args_build_a_100_step_cosine_ddpm():
    """Diffusion-policy teachers: DDPM with 100 training steps and the squared-cosine betas."""
    method = _method(process="vp_discrete", process_args={"schedule": "squaredcos_cap_v2", "T": 100}, prediction="eps")
    spec = method.model_spec()
    assert spec.process.name == "vp_discrete" and spec.process.T == 100 and spec.prediction == "eps"
    expected = torch.cumprod(1.0 - make_betas("squaredcos_cap_v2", 100).double(), dim=0)
    # alphas_cumprod is the float32 cumprod of diffusers, widened: float32 rounding only
    torch.testing.assert_close(spec.process.alphas_cumprod, expected, rtol=1e-5, atol=1e-7)
    # the sidecar records the arguments, so an export rebuilds the same process
    assert spec.process.describe() == {"name": "vp_discrete", "schedule": "squaredcos_cap_v2", "T": 100,
                                       "beta_start": 1e-4, "beta_end": 0.02}


def test_default_has_no_process_args():
    assert _method().model_spec().process.name == "flow"
    assert Diffusion.Options().process_args == {}


def test_unknown_process_argument_is_an_error_that_names_it():
    method = _method(process="vp_discrete", process_args={"Tsteps": 100})
    with pytest.raises(DistillError, match="Tsteps"):
        method.model_spec()
