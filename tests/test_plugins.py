"""Tests for the plugin manager (distill.plugins) with in-memory fake plugins."""
from __future__ import annotations

import json
import sys
import types
import warnings
from typing import Any, Callable

import pytest

from distill import plugins as plugins_mod
from distill.errors import DistillError
from distill.hookspecs import HOOK_NAMES, hookimpl
from distill.plugins import PluginManager, PluginWarning, Registry, check_compatible, format_table, get_manager

# --------------------------------------------------------------------------- fakes


class Dmd2:
    name = "dmd2"
    kinds = frozenset({"continuous"})
    description = "distribution matching distillation"


class Kd:
    name = "kd"
    kinds = frozenset({"continuous"})
    description = "knowledge distillation on teacher ODE pairs"


class Sdtt:
    name = "sdtt"
    kinds = frozenset({"discrete"})
    description = "self-distillation through time"


class Di4c:
    name = "di4c"
    kinds = frozenset({"discrete"})
    description = "discrete copula distillation"


class Lsd:
    name = "lsd"
    kinds = frozenset({"continuous", "discrete"})
    description = "a method for both kinds"


class Toy:
    name = "toy"
    kind = "continuous"
    description = "2-D Gaussian mixtures"


class Tokens:
    name = "tokens"
    kind = "discrete"
    description = "generated languages"


def load_safetensors(config, modality):
    """Bundled safetensors teachers."""


def export_st(run_dir, out, **options):
    return [out]


def sliced_w(samples, reference, **context):
    return {"sw": 0.0}


def make_plugin(modname: str, version: str = "1.0", **hooks: Callable[..., Any]) -> types.ModuleType:
    """A fake plugin module; each keyword is a hook implementation (decorated here)."""
    mod = types.ModuleType(modname)
    mod.__version__ = version
    for hook_name, fn in hooks.items():
        fn.__name__ = hook_name
        setattr(mod, hook_name, hookimpl(fn))
    return mod


def core_plugin() -> types.ModuleType:
    def methods(register):
        register.add("dmd2", Dmd2)
        register.add("kd", Kd)

    def modalities(register):
        register.add("toy", Toy)

    def teachers(register):
        register.add("safetensors", load_safetensors)

    return make_plugin(
        "fake_core_builtin",
        distill_register_methods=methods,
        distill_register_modalities=modalities,
        distill_register_teachers=teachers,
    )


class FakeDist:
    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.metadata = {"Name": name}


class FakeEP:
    """Stands in for importlib.metadata.EntryPoint (name, value, group, dist, load)."""

    group = "distill"

    def __init__(self, name: str, plugin: Any = None, *, dist: str | None = None, version: str = "0.1",
                 error: BaseException | None = None) -> None:
        self.name = name
        self.value = f"distill_{name}.plugin"
        self.dist = FakeDist(dist or f"distill-plugin-{name}", version)
        self._plugin = plugin
        self._error = error

    def load(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._plugin


@pytest.fixture
def core(monkeypatch):
    """Installs a fake built-in module and returns its module name."""
    mod = core_plugin()
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return mod.__name__


def build(core_name: str | None = None, eps=(), extra=(), env=None) -> PluginManager:
    return PluginManager(
        extra_plugins=list(extra),
        entry_points=list(eps),
        builtins=[core_name] if core_name else [],
        env=env or {},
    )


def tokens_plugin(version: str = "0.2") -> types.ModuleType:
    def modalities(register):
        register.add("tokens", Tokens, description="arithmetic and dependency-chain languages")

    def methods(register):
        register.add("sdtt", Sdtt)
        register.add("di4c", Di4c)
        register.add("lsd", Lsd)

    return make_plugin("distill_tokens.plugin", version,
                       distill_register_modalities=modalities, distill_register_methods=methods)


# --------------------------------------------------------------------------- registration


def test_registration_and_attribution(core):
    def exporters(register):
        register.add("safetensors", export_st, description="per-role safetensors")

    def metrics(register):
        register.add("sliced_w", sliced_w)

    extra = make_plugin("distill_extra.plugin", distill_register_exporters=exporters,
                        distill_register_metrics=metrics)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = build(core, eps=[FakeEP("tokens", tokens_plugin(), version="0.2"), FakeEP("extra", extra)])
    assert m.failed == []
    assert m.method("dmd2") is Dmd2
    assert m.modality("tokens") is Tokens
    assert m.teacher("safetensors") is load_safetensors
    assert m.exporter("safetensors") is export_st
    assert m.metric("sliced_w") is sliced_w
    assert m.methods.entry("dmd2").plugin == "distill"
    assert m.methods.entry("dmd2").builtin
    assert m.methods.entry("sdtt").plugin == "distill-plugin-tokens"
    assert m.exporters.entry("safetensors").plugin == "distill-plugin-extra"
    assert m.metrics.entry("sliced_w").plugin == "distill-plugin-extra"
    # descriptions: explicit, class attribute, or docstring's first line
    assert m.modalities.entry("tokens").description == "arithmetic and dependency-chain languages"
    assert m.methods.entry("kd").description == "knowledge distillation on teacher ODE pairs"
    assert m.teachers.entry("safetensors").description == "Bundled safetensors teachers."
    assert [p.name for p in m.plugins] == ["distill", "distill-plugin-tokens", "distill-plugin-extra"]
    assert m.hooks_of("distill") == ["distill_register_modalities", "distill_register_methods",
                                     "distill_register_teachers"]
    assert m.hooks_of("distill-plugin-extra") == ["distill_register_exporters", "distill_register_metrics"]
    assert m.registry("method") is m.methods and m.registry("distill_register_metrics") is m.metrics


def test_extra_plugins_with_explicit_name_and_zero_arg_hook():
    calls = []

    def methods():  # hooks may take fewer arguments than the spec
        calls.append(1)

    m = build(extra=[("my-plugin", make_plugin("x", distill_register_methods=methods))])
    assert calls == [1]
    assert [p.name for p in m.plugins] == ["my-plugin"]


def test_missing_builtin_placeholder_is_skipped_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = PluginManager(builtins=["distill_no_such_builtin_xyz"], entry_points=False, env={})
    assert m.failed == [] and m.plugins == []


def test_builtin_with_broken_import_is_reported(tmp_path, monkeypatch):
    (tmp_path / "fake_broken_builtin.py").write_text("import distill_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(PluginWarning, match="'distill' \\(core\\)"):
        m = PluginManager(builtins=["fake_broken_builtin"], entry_points=False, env={})
    assert m.failed[0].name == "distill" and m.failed[0].stage == "import"
    assert "distill_missing_dependency_xyz" in m.failed[0].error


def test_duplicate_names_name_both_plugins(core):
    def methods(register):
        register.add("mine", type("Mine", (), {"kinds": frozenset({"continuous"})}))
        register.add("dmd2", Dmd2)

    foo = make_plugin("distill_foo.plugin", distill_register_methods=methods)
    with pytest.warns(PluginWarning) as record:
        m = build(core, eps=[FakeEP("foo", foo, version="2.0")])
    expected = ("method 'dmd2' is registered by both 'distill' (core) and 'distill-plugin-foo'; "
                "uninstall one or set DISTILL_PLUGINS")
    assert any(expected in str(w.message) for w in record)
    (failure,) = m.failed
    assert failure.name == "distill-plugin-foo" and failure.version == "2.0"
    assert expected in failure.error and failure.hook == "distill_register_methods"
    # the failed plugin's other registrations are withdrawn; the core's stay
    assert "mine" not in m.methods and m.methods.entry("dmd2").plugin == "distill"
    assert [p.name for p in m.plugins] == ["distill"]


def test_duplicate_names_between_two_third_party_plugins(core):
    audio_a = type("AudioA", (), {"kind": "continuous"})
    audio_b = type("AudioB", (), {"kind": "continuous"})
    a = make_plugin("a", distill_register_modalities=lambda register: register.add("audio", audio_a))
    b = make_plugin("b", distill_register_modalities=lambda register: register.add("audio", audio_b))
    with pytest.warns(PluginWarning):
        m = build(eps=[FakeEP("a", a), FakeEP("b", b)])
    assert "modality 'audio' is registered by both 'distill-plugin-a' and 'distill-plugin-b'" in m.failed[0].error


def test_registry_direct_duplicate_and_validation():
    reg: Registry[type] = Registry("method", "methods", plugins_mod._validate_method)
    reg.add("dmd2", Dmd2)
    with pytest.raises(DistillError, match="registered twice"):
        reg.add("dmd2", Dmd2)
    with pytest.raises(DistillError, match="invalid name"):
        reg.add("my.method", Kd)

    bad_kinds = type("Bad", (), {"kinds": "continuous"})
    with pytest.raises(DistillError, match=r"kinds = frozenset\(\{'continuous'\}\)"):
        reg.add("bad", bad_kinds)
    unknown_kind = type("Bad2", (), {"kinds": frozenset({"continuous", "graph"})})
    with pytest.raises(DistillError, match="unknown kinds \\['graph'\\]"):
        reg.add("bad2", unknown_kind)
    with pytest.raises(DistillError, match="must be registered as a class"):
        reg.add("inst", Dmd2())
    with pytest.raises(DistillError, match="name attribute is 'dmd2'"):
        reg.add("other", Dmd2)


def test_modality_and_callable_validation():
    mods: Registry[type] = Registry("modality", "modalities", plugins_mod._validate_modality)
    with pytest.raises(DistillError, match="kind = 'continuous' or 'discrete'"):
        mods.add("nokind", type("NoKind", (), {}))
    mods.add("toy", Toy)
    teachers: Registry[Any] = Registry("teacher", "teachers", plugins_mod._validate_callable("teacher loader", 2))
    with pytest.raises(DistillError, match="must be callable"):
        teachers.add("t", 3)
    with pytest.raises(DistillError, match=r"accept \(config, modality\)"):
        teachers.add("t", lambda config: None)
    teachers.add("t", load_safetensors)


def test_invalid_object_inside_hook_fails_that_plugin():
    def modalities(register):
        register.add("graph", type("Graph", (), {"kind": "graph"}))

    with pytest.warns(PluginWarning, match="kind = 'continuous' or 'discrete'"):
        m = build(eps=[FakeEP("graph", make_plugin("g", distill_register_modalities=modalities))])
    assert m.failed[0].stage == "hook" and m.failed[0].hook == "distill_register_modalities"


# --------------------------------------------------------------------------- guarded loading


def test_broken_plugin_on_import_is_reported_and_others_keep_working(core):
    broken = FakeEP("broken", dist="distill-plugin-broken", version="0.3",
                    error=ImportError("No module named 'torchaudio'"))
    with pytest.warns(PluginWarning, match=r"'distill-plugin-broken' 0\.3 failed \(import\).*torchaudio"):
        m = build(core, eps=[broken, FakeEP("tokens", tokens_plugin())])
    (failure,) = m.failed
    assert (failure.name, failure.version, failure.stage) == ("distill-plugin-broken", "0.3", "import")
    assert "torchaudio" in failure.error
    d = m.describe()
    assert [p["name"] for p in d["plugins"]] == ["distill", "distill-plugin-tokens"]
    assert {e["name"] for e in d["methods"]} == {"dmd2", "kd", "sdtt", "di4c", "lsd"}
    assert d["failed"][0]["name"] == "distill-plugin-broken" and d["failed"][0]["version"] == "0.3"
    assert "distill-plugin-broken" in format_table(d)


def test_plugin_raising_inside_hook_is_withdrawn(core):
    def modalities(register):
        register.add("half", type("Half", (), {"kind": "continuous"}))

    def methods(register):
        raise RuntimeError("boom")

    bad = make_plugin("bad", distill_register_modalities=modalities, distill_register_methods=methods)
    with pytest.warns(PluginWarning, match="RuntimeError: boom"):
        m = build(core, eps=[FakeEP("bad", bad, version="9.9")])
    assert "half" not in m.modalities
    assert m.failed[0].to_dict() == {"name": "distill-plugin-bad", "version": "9.9", "stage": "hook",
                                     "hook": "distill_register_methods", "error": "RuntimeError: boom"}
    # unknown lookups mention the failure
    with pytest.raises(DistillError, match="1 plugin\\(s\\) failed to load: distill-plugin-bad"):
        m.modality("half")


def test_strict_mode_raises_on_import_failure(core):
    broken = FakeEP("broken", version="0.3", error=ImportError("nope"))
    with pytest.raises(DistillError, match=r"'distill-plugin-broken' 0\.3 failed \(import\).*DISTILL_STRICT_PLUGINS"):
        build(core, eps=[broken], env={"DISTILL_STRICT_PLUGINS": "1"})


def test_strict_mode_raises_on_duplicate(core):
    foo = make_plugin("foo", distill_register_methods=lambda register: register.add("dmd2", Dmd2))
    with pytest.raises(DistillError, match="registered by both 'distill' \\(core\\) and 'distill-plugin-foo'"):
        build(core, eps=[FakeEP("foo", foo)], env={"DISTILL_STRICT_PLUGINS": "true"})


def test_strict_off_values(core):
    broken = FakeEP("broken", error=ImportError("nope"))
    with pytest.warns(PluginWarning):
        m = build(core, eps=[broken], env={"DISTILL_STRICT_PLUGINS": "0"})
    assert len(m.failed) == 1


def test_real_entry_points_are_read_through_importlib_metadata(core, monkeypatch):
    from importlib import metadata

    real_ep = metadata.EntryPoint(name="ghost", value="distill_ghost_plugin_xyz.plugin", group="distill")
    fake = FakeEP("tokens", tokens_plugin())
    seen = {}

    def entry_points(**kw):
        seen.update(kw)
        return [real_ep, fake]

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    monkeypatch.setattr(plugins_mod, "BUILTIN_PLUGINS", [core])
    monkeypatch.delenv("DISTILL_PLUGINS", raising=False)
    monkeypatch.delenv("DISTILL_STRICT_PLUGINS", raising=False)
    with pytest.warns(PluginWarning, match="ghost"):
        m = get_manager(reload=True)
    try:
        assert seen == {"group": "distill"}
        assert m.failed[0].name == "ghost" and m.failed[0].stage == "import"
        assert "sdtt" in m.methods and "dmd2" in m.methods
        assert get_manager() is m  # cached
    finally:
        monkeypatch.undo()
        plugins_mod._manager = None


# --------------------------------------------------------------------------- DISTILL_PLUGINS


def test_allow_list_by_entry_point_and_distribution_name(core):
    eps = [FakeEP("tokens", tokens_plugin()),
           FakeEP("foo", make_plugin("foo"), dist="distill-plugin-foo"),
           FakeEP("bar", make_plugin("bar"), dist="distill_plugin_bar")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = build(core, eps=eps, env={"DISTILL_PLUGINS": "tokens, distill-plugin-bar,distill"})
    assert [p.name for p in m.plugins] == ["distill", "distill-plugin-tokens", "distill_plugin_bar"]
    assert "sdtt" in m.methods and "dmd2" in m.methods  # built-ins always load


def test_allow_list_empty_loads_only_builtins(core):
    m = build(core, eps=[FakeEP("tokens", tokens_plugin())], env={"DISTILL_PLUGINS": ""})
    assert [p.name for p in m.plugins] == ["distill"]


def test_allow_list_skips_broken_plugin_and_warns_on_unknown_name(core):
    eps = [FakeEP("broken", error=ImportError("nope")), FakeEP("tokens", tokens_plugin())]
    with pytest.warns(PluginWarning, match="DISTILL_PLUGINS names 'tokns'.*installed plugins: distill-plugin-broken"):
        m = build(core, eps=eps, env={"DISTILL_PLUGINS": "tokns"})
    assert m.failed == []  # broken was never imported
    with pytest.raises(DistillError, match="DISTILL_PLUGINS names 'tokns'"):
        build(core, eps=eps, env={"DISTILL_PLUGINS": "tokns", "DISTILL_STRICT_PLUGINS": "1"})


# --------------------------------------------------------------------------- misspelt hooks


def test_misspelt_hookimpl_is_caught_with_suggestion(core):
    def distill_register_method(register):  # missing the final "s"
        register.add("typo", Kd)

    typo = make_plugin("typo", distill_register_method=distill_register_method)
    with pytest.warns(PluginWarning, match="unknown hook 'distill_register_method'; did you mean 'distill_register_methods'"):
        m = build(core, eps=[FakeEP("typo", typo, version="1.2")])
    (failure,) = m.failed
    assert (failure.name, failure.version, failure.stage, failure.hook) == (
        "distill-plugin-typo", "1.2", "unknown hook", "distill_register_method")
    assert "typo" not in m.methods
    m.pm.check_pending()  # the bad plugin was unregistered, so pluggy is satisfied


def test_misspelt_hookimpl_strict(core):
    typo = make_plugin("typo", distill_register_metric=lambda register: None)
    with pytest.raises(DistillError, match="did you mean 'distill_register_metrics'"):
        build(core, eps=[FakeEP("typo", typo)], env={"DISTILL_STRICT_PLUGINS": "1"})


def test_hook_without_hookimpl_marker_is_caught():
    mod = types.ModuleType("unmarked")

    def distill_register_teachers(register):
        register.add("x", load_safetensors)

    mod.distill_register_teachers = distill_register_teachers
    with pytest.warns(PluginWarning, match="without @hookimpl"):
        m = build(eps=[FakeEP("unmarked", mod)])
    assert m.failed[0].stage == "unknown hook"


def test_wrong_hook_argument_name_is_reported():
    def distill_register_exporters(registry):  # must be called `register`
        pass

    with pytest.warns(PluginWarning, match="distill_register_methods\\(register\\)"):
        m = build(eps=[FakeEP("args", make_plugin("args", distill_register_exporters=distill_register_exporters))])
    assert m.failed[0].stage == "register"


# --------------------------------------------------------------------------- lookups


def test_unknown_lookups_suggest_close_matches(core):
    m = build(core, eps=[FakeEP("tokens", tokens_plugin())])
    with pytest.raises(DistillError) as err:
        m.method("dmd3")
    msg = str(err.value)
    assert "unknown method 'dmd3'" in msg and "did you mean 'dmd2'?" in msg
    assert "known methods: di4c, dmd2, kd, lsd, sdtt." in msg
    with pytest.raises(DistillError, match=r"did you mean 'tokens'\?.*pip install distill-plugin-tokes"):
        m.modality("tokes")
    with pytest.raises(DistillError, match="pip install distill-plugin-audio"):
        m.modality("audio")
    with pytest.raises(DistillError, match="did you mean 'safetensors'"):
        m.teacher("safetensor")
    with pytest.raises(DistillError, match="no exporters are registered"):
        m.exporter("onnx")
    with pytest.raises(DistillError, match="unknown metric 'fid'"):
        m.metric("fid")


# --------------------------------------------------------------------------- compatibility


def test_check_compatible_sentence(core):
    m = build(core, eps=[FakeEP("tokens", tokens_plugin())])
    m.check_compatible(Dmd2, Toy)
    m.check_compatible("lsd", "tokens")
    with pytest.raises(DistillError) as err:
        m.check_compatible(Dmd2, Tokens)
    assert str(err.value) == ("method 'dmd2' needs a continuous modality, but 'tokens' is discrete; "
                              "use one of: di4c, lsd, sdtt")
    with pytest.raises(DistillError, match="method 'sdtt' needs a discrete modality, but 'toy' is continuous; "
                                           "use one of: dmd2, kd, lsd"):
        check_compatible("sdtt", "toy", manager=m)


def test_check_compatible_without_alternatives(core):
    m = build(core)
    with pytest.raises(DistillError, match="no installed method supports discrete modalities"):
        m.check_compatible("dmd2", Tokens)


# --------------------------------------------------------------------------- listing


def test_describe_shape_and_json(core):
    def metrics(register):
        register.add("sliced_w", sliced_w, description="sliced Wasserstein")

    def exporters(register):
        register.add("safetensors", export_st)

    extra = make_plugin("e", distill_register_metrics=metrics, distill_register_exporters=exporters)
    broken = FakeEP("broken", version="0.3", error=ImportError("nope"))
    with pytest.warns(PluginWarning):
        m = build(core, eps=[FakeEP("tokens", tokens_plugin(), version="0.2"), FakeEP("extra", extra), broken])
    d = m.describe()
    assert list(d) == ["plugins", "modalities", "methods", "teachers", "exporters", "metrics", "failed"]
    assert json.loads(json.dumps(d)) == d
    assert d["plugins"][0]["name"] == "distill"
    assert d["plugins"][1] == {"name": "distill-plugin-tokens", "version": "0.2",
                               "hooks": ["distill_register_modalities", "distill_register_methods"]}
    assert all(set(p) == {"name", "version", "hooks"} for p in d["plugins"])
    assert {"name": "tokens", "plugin": "distill-plugin-tokens",
            "description": "arithmetic and dependency-chain languages", "kind": "discrete"} in d["modalities"]
    assert {"name": "lsd", "plugin": "distill-plugin-tokens", "description": "a method for both kinds",
            "kinds": ["continuous", "discrete"], "max_student_steps": None, "step_agnostic": False} in d["methods"]
    assert all(set(e) == {"name", "plugin", "description", "kind"} for e in d["modalities"])
    assert all(set(e) == {"name", "plugin", "description", "kinds", "max_student_steps", "step_agnostic"} for e in d["methods"])
    for key in ("teachers", "exporters", "metrics"):
        assert d[key] and all(set(e) == {"name", "plugin", "description"} for e in d[key])
    assert d["failed"] == [{"name": "distill-plugin-broken", "version": "0.3", "stage": "import",
                            "hook": None, "error": "ImportError: nope"}]

    text = format_table(d)
    assert "\x1b" not in text  # plain text for pipes and logs
    for word in ("Plugins", "Modalities", "Methods", "Teacher loaders", "Exporters", "Metrics",
                 "distill-plugin-tokens", "sliced Wasserstein", "continuous, discrete", "Failed plugins"):
        assert word in text


def test_format_table_empty():
    text = format_table(build().describe())
    assert "Methods: none" in text and "Failed" not in text


def test_hook_names_are_all_called(core):
    called = []

    def spy(name):
        def fn(register):
            called.append((name, register.kind))
        return fn

    spy_plugin = make_plugin("spy", **{h: spy(h) for h in HOOK_NAMES})
    build(extra=[("spy", spy_plugin)])
    assert called == [
        ("distill_register_modalities", "modality"),
        ("distill_register_methods", "method"),
        ("distill_register_teachers", "teacher"),
        ("distill_register_exporters", "exporter"),
        ("distill_register_metrics", "metric"),
    ]
