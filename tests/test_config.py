"""Config loading: YAML + overrides, typed validation, close-match suggestions."""
from __future__ import annotations

import pytest

from distill.config import RunConfig, build_dataclass, load_config, save_config
from distill.errors import DistillError
from distill.methods.dmd2 import DMD2


def test_yaml_plus_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: dmd2\ntrainer: {max_steps: 5}\nmethod_args: {critic_updates: 3}\n")
    cfg = load_config(path, ["trainer.max_steps=7", "optim.critic.lr=0.5", "eval.steps=[1,2]"])
    assert isinstance(cfg, RunConfig)
    assert cfg.method == "dmd2" and cfg.trainer.max_steps == 7
    assert cfg.optim["critic"].lr == 0.5 and cfg.eval.steps == [1, 2]
    assert cfg.method_args == {"critic_updates": 3}


@pytest.mark.parametrize("override, expected", [
    ("trainer.max_step=1", "did you mean 'max_steps'"),
    ("trainr.max_steps=1", "did you mean 'trainer'"),
    ("optim.critic.learning_rate=1", "optim.critic.learning_rate"),
])
def test_unknown_keys(override, expected):
    with pytest.raises(DistillError, match=expected):
        load_config(None, [override])


def test_bad_value_type_is_a_clear_error():
    with pytest.raises(DistillError, match="trainer.max_steps"):
        load_config(None, ["trainer.max_steps=lots"])


def test_override_without_equals():
    with pytest.raises(DistillError, match="key=value"):
        load_config(None, ["trainer.max_steps"])


def test_method_options_validated():
    options = build_dataclass(DMD2.Options, {"critic_updates": 4}, "method_args")
    assert options.critic_updates == 4
    with pytest.raises(DistillError, match="did you mean 'critic_updates'"):
        build_dataclass(DMD2.Options, {"critic_update": 4}, "method_args")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["method=dmd2", "trainer.max_steps=9", "optim.student.lr=0.1"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
