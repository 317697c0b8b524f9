"""CLI: user errors are one clear sentence with exit code 2; plugins listing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_sentence_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("distill: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def base_args(tmp_path: Path) -> list[str]:
    return ["modality=mix", "teacher.loader=mix_exact", f"output.dir={tmp_path / 'run'}",
            "trainer.max_steps=2", "trainer.progress=false", "--no-eval"]


@pytest.fixture
def empty_config(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text("method: kd\nmethod_args: {cache_size: 64, cache_batch: 64, teacher_steps: 2}\n")
    return path


def test_unknown_config_key_suggests_the_close_one(capsys, tmp_path, empty_config, fixture_plugins):
    code, _, err = run_cli(capsys, "train", str(empty_config), *base_args(tmp_path), "trainer.max_step=3")
    assert code == 2
    line = one_sentence_error(err)
    assert "trainer.max_step" in line and "did you mean 'max_steps'" in line


def test_unknown_method_option_suggests_the_close_one(capsys, tmp_path, empty_config, fixture_plugins):
    code, _, err = run_cli(capsys, "train", str(empty_config), *base_args(tmp_path), "method_args.cach_size=3")
    assert code == 2 and "did you mean 'cache_size'" in one_sentence_error(err)


def test_incompatible_method_and_modality(capsys, tmp_path, empty_config, fixture_plugins):
    code, _, err = run_cli(capsys, "train", str(empty_config), *base_args(tmp_path), "modality=fake_tokens", "method=dmd2")
    assert code == 2
    line = one_sentence_error(err)
    assert "dmd2" in line and "continuous" in line and "discrete" in line


def test_missing_teacher_file(capsys, tmp_path, empty_config, fixture_plugins):
    code, _, err = run_cli(capsys, "train", str(empty_config), *base_args(tmp_path),
                           "teacher.loader=safetensors", f"teacher.path={tmp_path / 'nope.safetensors'}")
    assert code == 2 and "does not exist" in one_sentence_error(err)


def test_corrupted_safetensors_teacher(capsys, tmp_path, empty_config, fixture_plugins):
    bad = tmp_path / "teacher.safetensors"
    bad.write_bytes(b"\x00\x01 this is not a safetensors file")
    (tmp_path / "teacher.json").write_text(json.dumps({"network": {"dim": 2, "hidden": 8, "depth": 1},
                                                       "process": {"name": "flow"}, "prediction": "flow"}))
    code, _, err = run_cli(capsys, "train", str(empty_config), *base_args(tmp_path),
                           "teacher.loader=safetensors", f"teacher.path={bad}")
    assert code == 2 and "not a valid safetensors file" in one_sentence_error(err)


def test_missing_config_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", str(tmp_path / "missing.yaml"))
    assert code == 2 and "does not exist" in one_sentence_error(err)


def test_unknown_modality_names_known_ones(capsys, tmp_path, empty_config, fixture_plugins):
    code, _, err = run_cli(capsys, "train", str(empty_config), *base_args(tmp_path), "modality=mixx")
    assert code == 2 and "mix" in one_sentence_error(err)


def test_plugins_json_lists_methods_and_fixture_modality(capsys, fixture_plugins):
    code, out, _ = run_cli(capsys, "plugins", "--json")
    assert code == 0
    info = json.loads(out)
    assert set(info) >= {"plugins", "modalities", "methods", "teachers", "exporters", "metrics"}
    methods = {m["name"]: m for m in info["methods"]}
    issue_4 = {"progressive", "reflow", "cd", "lcm", "scm", "meanflow", "shortcut"}
    issue_5 = {"dmd", "vsd", "sid", "fdistill"}
    assert {"kd", "dmd2", "diffusion"} | issue_4 | issue_5 <= set(methods)
    assert all(methods[m]["kinds"] == ["continuous"] for m in {"dmd2"} | issue_4 | issue_5)
    assert methods["kd"]["max_student_steps"] == 1 and methods["dmd2"]["max_student_steps"] is None
    assert methods["cd"]["step_agnostic"] and not methods["progressive"]["step_agnostic"]
    assert "mix" in {m["name"] for m in info["modalities"]}
    assert all(set(p) >= {"name", "version", "hooks"} for p in info["plugins"])


def test_without_third_party_plugins_the_core_still_lists(tmp_path):
    """DISTILL_PLUGINS set but empty loads only the built-ins: what uninstalling every plugin leaves."""
    env = dict(os.environ, DISTILL_PLUGINS="")
    env.pop("DISTILL_PLUGIN_MODULES", None)
    result = subprocess.run([sys.executable, "-m", "distill.cli", "plugins", "--json"], env=env,
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["modalities"] == []
    assert {"kd", "dmd2"} <= {m["name"] for m in info["methods"]}


def test_broken_plugin_is_reported_and_skipped(tmp_path):
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('boom at import')\n")
    env = dict(os.environ, DISTILL_PLUGIN_MODULES="broken_plugin", PYTHONPATH=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "distill.cli", "plugins", "--json"], env=env,
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert any(f["name"] == "broken_plugin" and "boom at import" in f["error"] for f in info["failed"])
    assert {"kd", "dmd2"} <= {m["name"] for m in info["methods"]}
    strict = subprocess.run([sys.executable, "-m", "distill.cli", "plugins"], env=dict(env, DISTILL_STRICT_PLUGINS="1"),
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert strict.returncode == 2 and "broken_plugin" in strict.stderr and "Traceback" not in strict.stderr


def test_sample_and_eval_commands(capsys, tmp_path, empty_config, fixture_plugins):
    code, _, err = run_cli(capsys, "train", str(empty_config), *base_args(tmp_path), "ema.half_life=2")
    assert code == 0, err
    run = tmp_path / "run"
    code, out, _ = run_cli(capsys, "sample", str(run), "--n", "10")
    assert code == 0 and (run / "samples/student_1step/samples.safetensors").is_file() and "10 samples" in out
    code, out, _ = run_cli(capsys, "eval", str(run), "--n", "200")
    assert code == 0
    rows = json.loads((run / "eval.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["teacher", "teacher", "kd"]
    report = (run / "report.md").read_text()
    assert "| teacher |" in report and "| kd |" in report and "speedup_vs_teacher" in report
    code, _, err = run_cli(capsys, "eval", str(tmp_path))
    assert code == 2 and "not a distill run directory" in one_sentence_error(err)


def test_demo_of_a_modality_without_a_demo_is_a_user_error(capsys, fixture_plugins):
    code, _, err = run_cli(capsys, "demo", "--modality", "mix")
    assert code == 2
    assert "modality 'mix' has no demo here" in one_sentence_error(err)


def test_demo_prefers_the_richest_installed_modality(monkeypatch):
    from distill import demo, plugins

    class WithDemo:
        @classmethod
        def demo_plan(cls):
            return demo.DemoPlan(minutes=1.0, config={"method": "dmd2"}, teacher="a fixture teacher")

    class Manager:
        modalities = ["zeta", "toy", "mix"]

        def modality(self, name):
            return WithDemo if name in ("zeta", "toy") else object

    monkeypatch.setattr(plugins, "get_manager", lambda: Manager())
    assert demo.choose_plan()[0] == "toy"  # PREFERENCE first
    monkeypatch.setattr(demo, "PREFERENCE", [])
    assert demo.choose_plan()[0] == "toy"  # then the others by name
    assert demo.choose_plan("zeta")[0] == "zeta"
