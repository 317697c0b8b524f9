"""`distill bench`: the JSON shape every modality's benchmark shares, on the fixture modality."""
from __future__ import annotations

import json

import pytest

from distill.bench import markdown_table, run_bench, split_task_override
from distill.errors import DistillError


def test_bench_rows_and_file_shape(tmp_path, fixture_plugins):
    out = tmp_path / "mix.json"
    result = run_bench("mix", out=out, workdir=tmp_path / "work", progress=False, methods=["kd", "dmd2"],
                       markdown=tmp_path / "mix.md")
    saved = json.loads(out.read_text())
    assert saved["modality"] == "mix" and saved["rows"] == result["rows"]
    rows = saved["rows"]
    teacher = [r for r in rows if r["method"] == "teacher"]
    assert [(r["sampler"], r["nfe"]) for r in teacher] == [("heun", 11), ("euler", 1), ("euler", 2)]
    assert teacher[0]["speedup_vs_teacher"] == 1.0
    students = {(r["method"], r["steps"]) for r in rows if r["method"] != "teacher"}
    assert students == {("kd", 1), ("dmd2", 1), ("dmd2", 2)}  # kd trains one-step students only
    for r in rows:
        assert {"method", "steps", "nfe", "sliced_wasserstein", "ms_per_sample", "speedup_vs_teacher"} <= set(r)
        assert r["ms_per_sample"] > 0
    for r in rows:
        if r["method"] != "teacher":
            assert r["nfe"] == r["steps"] and r["train_steps"] == 3 and "paired_rmse_vs_teacher" in r
    table = (tmp_path / "mix.md").read_text()
    assert table.count("\n") == len(rows) + 2 and "| teacher |" in table
    assert markdown_table(saved) == table


def test_seeds_average_metrics_and_report_their_spread():
    from distill.bench import aggregate_seeds

    per_seed = [{"fd": 10.0, "acc": 0.9, "weights": [0.5, 0.5]}, {"fd": 14.0, "acc": 0.8, "weights": [0.4, 0.6]},
                {"fd": 12.0, "acc": 0.85, "weights": [0.3, 0.7]}]
    out = aggregate_seeds(per_seed, ["fd"])
    assert out["fd"] == 12.0 and out["fd_std"] == 2.0  # sample std (n - 1) of 10, 14, 12
    assert abs(out["acc"] - 0.85) < 1e-12 and "acc_std" not in out
    assert out["weights"] == [0.5, 0.5]  # lists are not averaged: the first seed's
    assert aggregate_seeds(per_seed[:1], ["fd"]) == per_seed[0]  # one seed: no spread to report


def test_bench_over_several_noise_seeds(tmp_path, fixture_plugins, monkeypatch):
    _spec_with(monkeypatch, seeds=3, std_keys=["sliced_wasserstein"])
    result = run_bench("mix", workdir=tmp_path / "work", progress=False, methods=["kd"])
    assert result["seeds"] == 3
    assert all("sliced_wasserstein_std" in r for r in result["rows"])
    # Three noise draws give three different Heun samples, hence a spread (the 1-NFE teacher
    # collapses every draw onto the mixture mean, so its spread may be exactly 0).
    assert result["rows"][0]["sliced_wasserstein_std"] > 0
    assert {r["method"] for r in result["rows"]} == {"teacher", "kd"}


def _spec_with(monkeypatch, **changes):
    from distill.plugins import get_manager

    cls = get_manager().modality("mix")
    original = cls.benchmark.__func__

    def changed(klass, quick=False):
        spec = original(klass, quick)
        for key, value in changes.items():
            setattr(spec, key, value)
        return spec

    monkeypatch.setattr(cls, "benchmark", classmethod(changed))


def test_merge_keeps_other_methods_rows_and_reuses_the_cached_teacher(tmp_path, fixture_plugins, monkeypatch):
    import pytest

    import distill.bench as bench
    from distill.errors import DistillError

    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "mix.json"
    first = run_bench("mix", out=out, workdir=tmp_path / "w1", progress=False, methods=["kd"])
    generated = []
    original = bench.generate

    def spy(fn, noise, cond, batch_size, label="", progress=True):
        generated.append((label, noise.shape[0]))
        return original(fn, noise, cond, batch_size, label=label, progress=progress)

    monkeypatch.setattr(bench, "generate", spy)
    second = run_bench("mix", out=out, workdir=tmp_path / "w2", progress=False, methods=["dmd2"], merge=True)
    saved = json.loads(out.read_text())
    assert saved == second
    students = [(r["method"], r["steps"]) for r in saved["rows"] if r["method"] != "teacher"]
    assert sorted(students) == [("dmd2", 1), ("dmd2", 2), ("kd", 1)]  # kd kept from the first run
    assert [r for r in saved["rows"] if r["method"] == "kd"] == [r for r in first["rows"] if r["method"] == "kd"]
    # the usual teacher setting came from the cache (timed on one batch only), with the same metrics
    teacher = [n for label, n in generated if label.startswith("teacher")]
    assert teacher == [100] * 3  # three teacher rows, each timed on one batch (BenchSpec.batch_size), not 300 samples
    assert saved["rows"][0]["sliced_wasserstein"] == first["rows"][0]["sliced_wasserstein"]
    assert saved["rows"][0]["speedup_vs_teacher"] == 1.0
    # a file measured under another protocol is refused before any training
    other = dict(saved, n_samples=999)
    out.write_text(json.dumps(other))
    trained = []
    monkeypatch.setattr("distill.engine.run.train", lambda cfg: trained.append(cfg))
    with pytest.raises(DistillError, match="another protocol.*n_samples"):
        run_bench("mix", out=out, workdir=tmp_path / "w3", progress=False, methods=["kd"], merge=True)
    assert trained == [] and json.loads(out.read_text()) == other  # nothing lost
    # no method names: the teacher rows only
    assert {r["method"] for r in run_bench("mix", workdir=tmp_path / "w4", progress=False, methods=[])["rows"]} == {
        "teacher"}
    with pytest.raises(DistillError, match="--merge needs --out"):
        run_bench("mix", progress=False, methods=["kd"], merge=True)


def test_step_agnostic_methods_train_one_student_for_all_step_counts(tmp_path, fixture_plugins, monkeypatch):
    import distill.engine.run as engine_run
    from distill.plugins import get_manager

    assert get_manager().method("cd").step_agnostic and not get_manager().method("dmd2").step_agnostic
    _spec_with(monkeypatch, method_steps={"cd": [1, 2, 4]})
    runs = []
    original = engine_run.train
    monkeypatch.setattr(engine_run, "train", lambda cfg: runs.append(cfg) or original(cfg))
    result = run_bench("mix", workdir=tmp_path / "w", progress=False, methods=["cd"])
    rows = [r for r in result["rows"] if r["method"] == "cd"]
    assert len(runs) == 1 and [r["steps"] for r in rows] == [1, 2, 4] and [r["nfe"] for r in rows] == [1, 2, 4]
    assert len({r["train_seconds"] for r in rows}) == 1 and all(r["train_steps"] == 3 for r in rows)
    # the same student at more steps gives other samples
    assert len({r["paired_rmse_vs_teacher"] for r in rows}) == 3


def test_overrides_reach_every_run_and_are_part_of_the_protocol(tmp_path, fixture_plugins, monkeypatch):
    import pytest

    import distill.engine.run as engine_run
    from distill.errors import DistillError

    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    seen = []
    original = engine_run.train
    monkeypatch.setattr(engine_run, "train", lambda cfg: seen.append(cfg.data.batch_size) or original(cfg))
    out = tmp_path / "mix.json"
    result = run_bench("mix", out=out, workdir=tmp_path / "w", progress=False, methods=["kd"],
                       overrides=["data.batch_size=16"])
    assert seen == [16] and result["overrides"] == ["data.batch_size=16"]
    with pytest.raises(DistillError, match="another protocol.*overrides"):
        run_bench("mix", out=out, workdir=tmp_path / "w2", progress=False, methods=[], merge=True)
    with pytest.raises(DistillError, match="--set"):
        run_bench("mix", progress=False, methods=[], overrides=["not a pair"])


def test_reuse_loads_finished_runs_of_the_same_config_and_retrains_the_rest(tmp_path, fixture_plugins, monkeypatch):
    import pytest

    import distill.engine.run as engine_run
    from distill.errors import DistillError

    work = tmp_path / "w"
    first = run_bench("mix", workdir=work, progress=False, methods=["kd"])
    trained = []
    original = engine_run.train
    monkeypatch.setattr(engine_run, "train", lambda cfg: trained.append(cfg.method) or original(cfg))
    again = run_bench("mix", workdir=work, progress=False, methods=["kd"], reuse=True)
    assert trained == []  # the finished kd run was loaded, not retrained
    kd = [r for r in first["rows"] if r["method"] == "kd"]
    reused = [r for r in again["rows"] if r["method"] == "kd"]
    # same student, same noise: the same samples, hence the same scores and training record
    for key in ("sliced_wasserstein", "paired_rmse_vs_teacher", "train_steps", "train_seconds"):
        assert [r[key] for r in reused] == [r[key] for r in kd]
    # another config (a longer budget here) is retrained, in place
    _spec_with(monkeypatch, max_steps={"kd": 4})
    third = run_bench("mix", workdir=work, progress=False, methods=["kd"], reuse=True)
    assert trained == ["kd"] and [r["train_steps"] for r in third["rows"] if r["method"] == "kd"] == [4]
    with pytest.raises(DistillError, match="--reuse needs --workdir"):
        run_bench("mix", progress=False, methods=["kd"], reuse=True)


def test_the_scoring_protocol_is_part_of_the_merge_check(tmp_path, fixture_plugins, monkeypatch):
    import pytest

    from distill.errors import DistillError

    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "mix.json"
    run_bench("mix", out=out, workdir=tmp_path / "w", progress=False, methods=[])
    old = json.loads(out.read_text())
    assert old["protocol"] == ""
    del old["protocol"]  # a file written before the key existed reads as the empty protocol
    out.write_text(json.dumps(old))
    run_bench("mix", out=out, workdir=tmp_path / "w", progress=False, methods=[], merge=True)
    _spec_with(monkeypatch, protocol="balanced labels")
    with pytest.raises(DistillError, match="another protocol.*protocol"):
        run_bench("mix", out=out, workdir=tmp_path / "w2", progress=False, methods=[], merge=True)


def test_split_task_override_picks_the_last_task_and_keeps_the_rest():
    task, rest = split_task_override(["a.b=1", "modality_args.task=x", "modality_args.task=y"], ("x", "y"), "demo")
    assert task == "y" and rest == ["a.b=1"]
    assert split_task_override(None, ("x",), "demo") == (None, [])
    with pytest.raises(DistillError, match="demo benchmark's tasks are x, y"):
        split_task_override(["modality_args.task=z"], ("x", "y"), "demo")


def test_a_two_stage_entry_trains_from_its_start_entrys_student(tmp_path, fixture_plugins, monkeypatch):
    import distill.engine.run as engine_run
    from distill.plugins import get_manager

    spec = get_manager().modality("mix").benchmark(False)
    _spec_with(monkeypatch, warm_starts={"kd+dmd2": "kd"},
               method_configs={**spec.method_configs, "kd+dmd2": {"method": "dmd2"}},
               method_steps={**spec.method_steps, "kd+dmd2": [1]}, max_steps={"kd+dmd2": 2})
    runs = []
    original = engine_run.train
    monkeypatch.setattr(engine_run, "train", lambda cfg: runs.append((cfg.method, cfg.student.init)) or original(cfg))
    work = tmp_path / "w"
    result = run_bench("mix", workdir=work, progress=False, methods=["kd+dmd2"])
    # the start is trained first (not reported: it was not asked for), then dmd2 from its export
    assert [m for m, _ in runs] == ["kd", "dmd2"] and runs[0][1] is None
    assert runs[1][1] in {str(work / "kd-1" / "student_ema.safetensors"), str(work / "kd-1" / "student.safetensors")}
    rows = [r for r in result["rows"] if r["method"] != "teacher"]
    assert [(r["method"], r["steps"], r["nfe"]) for r in rows] == [("kd+dmd2", 1, 1)]
    assert rows[0]["train_steps"] == 3 + 2  # what the recipe cost: both stages
    # asked for with its start, the start trains once and has rows too
    runs.clear()
    both = run_bench("mix", workdir=tmp_path / "w2", progress=False, methods=["kd", "kd+dmd2"], reuse=True)
    assert [m for m, _ in runs] == ["kd", "dmd2"]
    assert [r["method"] for r in both["rows"] if r["method"] != "teacher"] == ["kd", "kd+dmd2"]
    runs.clear()  # reused: the same config (the start's export path included) is loaded, not retrained
    run_bench("mix", workdir=tmp_path / "w2", progress=False, methods=["kd+dmd2"], reuse=True)
    assert runs == []


def test_bench_entries_and_warm_start_cycles(fixture_plugins, monkeypatch):
    from distill.bench import BenchSpec, bench_entries

    spec = BenchSpec(teacher_rows=[], usual={}, base_config={}, warm_starts={"kd+dmd2": "kd", "kd+vsd": "kd"},
                     method_configs={"kd+dmd2": {"method": "dmd2"}, "kd+vsd": {"method": "vsd"}})
    # an entry joins the list only when its method and its start are compatible
    assert bench_entries(spec, ["kd", "dmd2"]) == ["kd", "dmd2", "kd+dmd2"]
    assert bench_entries(spec, ["dmd2"]) == ["dmd2"]
    _spec_with(monkeypatch, warm_starts={"kd": "dmd2", "dmd2": "kd"})
    with pytest.raises(DistillError, match="cycle: kd -> dmd2 -> kd"):
        run_bench("mix", progress=False, methods=["kd"])
