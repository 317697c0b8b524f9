"""``student.prediction``: a teacher-initialised student read as another native prediction type."""
from __future__ import annotations

import json

import pytest
import torch

from distill.config import load_config
from distill.engine.run import open_run, train
from distill.errors import DistillError


@pytest.fixture
def eps_teacher(tmp_path, fixture_plugins):
    run = train(load_config(None, [
        "modality=mix", "method=diffusion", f"output.dir={tmp_path / 'teacher'}", "trainer.max_steps=3",
        "trainer.progress=false", "data.batch_size=64", "method_args.prediction=eps", "method_args.process=vp"]))
    return run.run_dir / "student.safetensors"


def _student_run(tmp_path, teacher, method, *extra):
    return train(load_config(None, [
        "modality=mix", f"method={method}", "teacher.loader=safetensors", f"teacher.path={teacher}",
        f"output.dir={tmp_path / method}", "trainer.max_steps=1", "trainer.progress=false", "data.batch_size=32",
        "trainer.checkpoint_every=1", *extra]))


def test_teacher_weights_read_as_another_prediction(tmp_path, eps_teacher):
    run = _student_run(tmp_path, eps_teacher, "cd", "student.prediction=v", "trainer.max_steps=0")
    module = run.module
    student, teacher = module.trained["student"], module.teacher
    assert teacher.prediction == "eps" and student.prediction == "v"
    for a, b in zip(teacher.net.parameters(), student.net.parameters()):
        assert torch.equal(a, b)  # the same weights ...
    x, t = torch.randn(8, 2), torch.full((8,), 0.5)
    raw = teacher.raw(x, t)
    # ... whose output the student reads as v: x0 = alpha x - sigma v (Salimans & Ho 2022)
    a, s = teacher.process.alpha(t).view(-1, 1), teacher.process.sigma(t).view(-1, 1)
    torch.testing.assert_close(student.predict(x, t, target="x0"), a * x - s * raw)
    # roles copied from the student (cd's EMA target) inherit the reparameterisation
    assert module.trained["target"].prediction == "v"


def test_the_export_records_it_and_the_default_is_the_teacher(tmp_path, eps_teacher):
    run = _student_run(tmp_path, eps_teacher, "dmd2", "student.prediction=x0")
    side = json.loads((run.run_dir / "student.json").read_text())
    assert side["prediction"] == "x0" and run.module.trained["critic"].prediction == "eps"
    assert open_run(run.run_dir).student.prediction == "x0"
    plain = _student_run(tmp_path / "plain", eps_teacher, "dmd2", "trainer.max_steps=0")
    assert plain.module.trained["student"].prediction == "eps"


def test_unknown_prediction_fails(tmp_path, eps_teacher):
    with pytest.raises(DistillError, match="unknown prediction type 'velocity'"):
        _student_run(tmp_path, eps_teacher, "dmd2", "student.prediction=velocity", "trainer.max_steps=0")
