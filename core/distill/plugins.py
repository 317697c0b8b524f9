"""The plugin manager: entry points, guarded loading, registries and listing.

Loading order (:class:`PluginManager`):

1. the built-in plugins, by module name (:data:`BUILTIN_PLUGINS`);
2. plugin objects passed explicitly (``extra_plugins``; tests and embedding);
3. setuptools entry points in the ``distill`` group, optionally limited by the
   ``DISTILL_PLUGINS`` allow-list.

Each plugin is registered with pluggy, checked for misspelt hooks (with a close
match suggested), and then each hook in :data:`distill.hookspecs.HOOK_NAMES` is
called once per implementing plugin, with the registries attributing everything
added to that plugin. A plugin that fails to import, fails validation or raises
inside a hook is reported by name and version (a :class:`PluginWarning` and an
entry in :attr:`PluginManager.failed`); everything it registered is withdrawn
and the other plugins keep working. ``DISTILL_STRICT_PLUGINS=1`` turns a failure
into a :class:`~distill.errors.DistillError`.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
import threading
import warnings
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import Any, Callable, Generic, Iterable, Iterator, Mapping, Sequence, TypeVar

import pluggy

from distill import hookspecs
from distill.errors import DistillError

__all__ = [
    "BUILTIN_PLUGINS",
    "CORE_PLUGIN_NAME",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "Entry",
    "PluginFailure",
    "PluginInfo",
    "PluginManager",
    "PluginWarning",
    "Registry",
    "check_compatible",
    "format_table",
    "get_manager",
]

T = TypeVar("T")

#: Modules of distill itself that register through the hooks; always loaded first.
BUILTIN_PLUGINS: list[str] = ["distill.methods"]
#: How built-in plugins are named in listings and messages.
CORE_PLUGIN_NAME = "distill"
#: The setuptools entry-point group third-party plugins advertise themselves in.
ENTRY_POINT_GROUP = "distill"
#: Modality kinds.
KINDS: tuple[str, ...] = ("continuous", "discrete")

ENV_ALLOW = "DISTILL_PLUGINS"
ENV_STRICT = "DISTILL_STRICT_PLUGINS"
ENV_MODULES = "DISTILL_PLUGIN_MODULES"  # comma-separated importable plugin modules (development, tests)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
_TRUE = {"1", "true", "yes", "on"}


class PluginWarning(UserWarning):
    """Emitted when a plugin fails to load; the rest of distill keeps working."""


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class PluginInfo:
    """One loaded plugin: its display name, version and where it came from."""

    name: str
    version: str
    builtin: bool = False
    module: str = ""
    entry_point: str | None = None
    distribution: str | None = None

    @property
    def label(self) -> str:
        """How messages name the plugin: ``'distill' (core)`` or ``'distill-plugin-foo'``."""
        return f"{self.name!r} (core)" if self.builtin else repr(self.name)


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded, and why.

    ``stage`` is one of ``"import"`` (loading the module raised), ``"register"``
    (pluggy rejected it, e.g. a hook argument not in the spec), ``"unknown hook"``
    (a misspelt hook name, or a hook function without ``@hookimpl``) or ``"hook"``
    (the hook raised, including a rejected ``register.add``).
    """

    name: str
    version: str
    stage: str
    error: str
    hook: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "stage": self.stage, "hook": self.hook, "error": self.error}


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered thing: its name, the object, a one-line description, and its plugin."""

    name: str
    obj: T
    description: str
    plugin: str
    builtin: bool = False

    @property
    def plugin_label(self) -> str:
        return f"{self.plugin!r} (core)" if self.builtin else repr(self.plugin)


# --------------------------------------------------------------------------- registries


def _first_line(text: str | None) -> str:
    for line in (text or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _default_description(obj: Any) -> str:
    desc = getattr(obj, "description", None)
    if isinstance(desc, str) and desc.strip():
        return desc.strip()
    return _first_line(inspect.getdoc(obj)) if (inspect.isclass(obj) or callable(obj)) else ""


def _suggest(name: str, known: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"did you mean {match[0]!r}? " if match else ""


class Registry(Generic[T]):
    """The typed ``register`` object a hook receives: one per kind of thing.

    ``register.add(name, obj, *, description="")`` records ``obj`` under ``name``
    with the plugin currently being called (set by the manager). Names must be
    unique across all plugins; ``obj`` is validated for its kind.
    """

    def __init__(
        self,
        kind: str,
        plural: str,
        validate: Callable[[str, Any], None] | None = None,
        hint: Callable[[str], str] | None = None,
    ) -> None:
        self.kind = kind
        self.plural = plural
        self._validate = validate
        self._hint = hint
        self._entries: dict[str, Entry[T]] = {}
        self._current: PluginInfo | None = None
        self.failed_note: Callable[[], str] = lambda: ""

    # -- registration ------------------------------------------------------
    def add(self, name: str, obj: T, *, description: str = "") -> T:
        """Register ``obj`` under ``name``; returns ``obj``.

        Raises :class:`~distill.errors.DistillError` for an invalid name, an
        object that does not meet the contract of this kind, or a name another
        plugin (or this one) already registered.
        """
        plugin = self._current or PluginInfo(name="<unknown>", version="unknown")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise DistillError(
                f"{plugin.label} registers a {self.kind} under the invalid name {name!r}; "
                "names are letters, digits, '_' and '-' (no dots, which configs reserve for dotted paths)"
            )
        if self._validate is not None:
            self._validate(name, obj)
        if name in self._entries:
            other = self._entries[name]
            if other.plugin == plugin.name:
                raise DistillError(f"{self.kind} {name!r} is registered twice by {plugin.label}; register each name once")
            raise DistillError(
                f"{self.kind} {name!r} is registered by both {other.plugin_label} and {plugin.label}; "
                f"uninstall one or set {ENV_ALLOW}"
            )
        if not isinstance(description, str):
            raise DistillError(f"{self.kind} {name!r}: description must be a string, got {type(description).__name__}")
        self._entries[name] = Entry(
            name=name,
            obj=obj,
            description=description.strip() or _default_description(obj),
            plugin=plugin.name,
            builtin=plugin.builtin,
        )
        return obj

    def _remove_plugin(self, plugin: str) -> None:
        for key in [k for k, e in self._entries.items() if e.plugin == plugin]:
            del self._entries[key]

    # -- lookup ------------------------------------------------------------
    def get(self, name: str) -> T:
        """The object registered under ``name``; unknown names raise with a suggestion."""
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            pass
        known = sorted(self._entries)
        msg = f"unknown {self.kind} {name!r}; {_suggest(str(name), known)}"
        msg += f"known {self.plural}: {', '.join(known)}." if known else f"no {self.plural} are registered."
        if self._hint is not None:
            msg += " " + self._hint(str(name))
        note = self.failed_note()
        if note:
            msg += " " + note
        raise DistillError(msg)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[k] for k in sorted(self._entries)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _check_name_attr(kind: str, name: str, obj: Any) -> None:
    attr = getattr(obj, "name", "")
    if isinstance(attr, str) and attr and attr != name:
        raise DistillError(
            f"{kind} class {obj.__qualname__} is registered as {name!r} but its name attribute is {attr!r}; "
            f"register it under its own name or set name = {name!r}"
        )


def _require_class(kind: str, name: str, obj: Any) -> None:
    if not inspect.isclass(obj):
        raise DistillError(
            f"{kind} {name!r} must be registered as a class, got {type(obj).__name__} {obj!r}; "
            f"pass the class itself: register.add({name!r}, MyClass)"
        )


def _validate_modality(name: str, obj: Any) -> None:
    _require_class("modality", name, obj)
    _check_name_attr("modality", name, obj)
    kind = getattr(obj, "kind", None)
    if kind not in KINDS:
        raise DistillError(
            f"modality {name!r} ({obj.__qualname__}) has kind {kind!r}; "
            f"set the class attribute kind = 'continuous' or 'discrete'"
        )


def _validate_method(name: str, obj: Any) -> None:
    _require_class("method", name, obj)
    _check_name_attr("method", name, obj)
    kinds = getattr(obj, "kinds", None)
    if isinstance(kinds, str) or not isinstance(kinds, (set, frozenset, tuple, list)) or not kinds:
        raise DistillError(
            f"method {name!r} ({obj.__qualname__}) has kinds {kinds!r}; set the class attribute "
            f"kinds = frozenset({{'continuous'}}) (a non-empty set drawn from {set(KINDS)})"
        )
    bad = sorted(str(k) for k in kinds if k not in KINDS)
    if bad:
        raise DistillError(
            f"method {name!r} ({obj.__qualname__}) declares unknown kinds {bad}; kinds must be a subset of {set(KINDS)}"
        )


def _validate_callable(kind: str, arity: int | None = None) -> Callable[[str, Any], None]:
    def validate(name: str, obj: Any) -> None:
        if not callable(obj):
            raise DistillError(f"{kind} {name!r} must be callable, got {type(obj).__name__} {obj!r}")
        if arity is None:
            return
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):  # builtins without a signature: trust them
            return
        try:
            sig.bind(*([None] * arity))
        except TypeError:
            raise DistillError(
                f"{kind} {name!r} has signature {name}{sig}; it must accept (config, modality) positionally"
            ) from None

    return validate


def _modality_hint(name: str) -> str:
    return f"If {name!r} comes from a plugin, install it: pip install distill-plugin-{name}? (see `distill plugins`)"


def _generic_hint(name: str) -> str:
    return "Run `distill plugins` to see what is installed."


# --------------------------------------------------------------------------- manager


def _describe_exc(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, DistillError) else f"{type(exc).__name__}: {exc}"


def _env_true(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).strip().lower()


def _core_version() -> str:
    try:
        return importlib_metadata.version("distill")
    except importlib_metadata.PackageNotFoundError:
        mod = sys.modules.get("distill")
        return str(getattr(mod, "__version__", "unknown"))


def _dist_of(ep: Any) -> tuple[str | None, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, "unknown"
    name = None
    try:
        name = dist.metadata["Name"]
    except Exception:  # noqa: BLE001 - metadata is best effort
        name = None
    name = name or getattr(dist, "name", None)
    version = getattr(dist, "version", None) or "unknown"
    return (str(name) if name else None), str(version)


@dataclass
class _Source:
    info: PluginInfo
    load: Callable[[], Any]
    optional_missing: str | None = None  # a built-in module that may not exist yet
    plugin: Any = None


@dataclass
class _State:
    plugins: list[PluginInfo] = field(default_factory=list)
    failed: list[PluginFailure] = field(default_factory=list)


class PluginManager:
    """Loads plugins and holds the registries of everything they registered.

    Args:
        extra_plugins: plugin objects to register after the built-ins, each a
            module/object with hook implementations or a ``(name, plugin)`` pair
            (version from the plugin's ``__version__``). They are always loaded.
        entry_points: ``True`` to load the ``distill`` entry-point group,
            ``False`` to skip it, or an iterable of entry-point objects to use
            instead of the installed ones (anything with ``name``, ``load()`` and
            optionally ``dist``).
        builtins: built-in plugin module names (default :data:`BUILTIN_PLUGINS`).
        env: environment to read ``DISTILL_PLUGINS`` and ``DISTILL_STRICT_PLUGINS``
            from (default ``os.environ``).
    """

    def __init__(
        self,
        extra_plugins: Sequence[Any] = (),
        *,
        entry_points: bool | Iterable[Any] = True,
        builtins: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.strict = _env_true(env.get(ENV_STRICT))
        allow_raw = env.get(ENV_ALLOW)
        self.allow: list[str] | None = (
            None if allow_raw is None else [a.strip() for a in allow_raw.split(",") if a.strip()]
        )
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.modalities: Registry[type] = Registry("modality", "modalities", _validate_modality, _modality_hint)
        self.methods: Registry[type] = Registry("method", "methods", _validate_method, _generic_hint)
        self.teachers: Registry[Callable[..., Any]] = Registry(
            "teacher", "teachers", _validate_callable("teacher loader", 2), _generic_hint
        )
        self.exporters: Registry[Callable[..., Any]] = Registry(
            "exporter", "exporters", _validate_callable("exporter"), _generic_hint
        )
        self.metrics: Registry[Callable[..., Any]] = Registry(
            "metric", "metrics", _validate_callable("metric"), _generic_hint
        )
        self._registries: dict[str, Registry[Any]] = {
            "distill_register_modalities": self.modalities,
            "distill_register_methods": self.methods,
            "distill_register_teachers": self.teachers,
            "distill_register_exporters": self.exporters,
            "distill_register_metrics": self.metrics,
        }
        for reg in self._registries.values():
            reg.failed_note = self._failed_note
        self._state = _State()
        self._by_pm_name: dict[str, PluginInfo] = {}

        sources = self._builtin_sources(BUILTIN_PLUGINS if builtins is None else builtins)
        sources += self._module_sources(env.get(ENV_MODULES, ""))
        sources += self._extra_sources(extra_plugins)
        if entry_points is not False:
            sources += self._entry_point_sources(None if entry_points is True else entry_points)
        self._load(sources)

    # -- public state --------------------------------------------------------
    @property
    def plugins(self) -> list[PluginInfo]:
        """Plugins that loaded, in load order."""
        return list(self._state.plugins)

    @property
    def failed(self) -> list[PluginFailure]:
        """Plugins that failed to load, with the reason."""
        return list(self._state.failed)

    def registry(self, hook_or_kind: str) -> Registry[Any]:
        """The registry filled by a hook (``distill_register_methods``) or of a kind (``method``)."""
        if hook_or_kind in self._registries:
            return self._registries[hook_or_kind]
        for reg in self._registries.values():
            if hook_or_kind in (reg.kind, reg.plural):
                return reg
        raise DistillError(f"no registry {hook_or_kind!r}; hooks: {', '.join(self._registries)}")

    def hooks_of(self, plugin: str) -> list[str]:
        """The distill hooks a loaded plugin implements, in call order."""
        names: set[str] = set()
        for pm_name, info in self._by_pm_name.items():
            if info.name != plugin:
                continue
            obj = self.pm.get_plugin(pm_name)
            if obj is None:
                continue
            for caller in self.pm.get_hookcallers(obj) or []:
                names.add(caller.name)
        return [h for h in hookspecs.HOOK_NAMES if h in names]

    # -- lookups ---------------------------------------------------------------
    def modality(self, name: str) -> type:
        """The modality class registered under ``name``."""
        return self.modalities.get(name)

    def method(self, name: str) -> type:
        """The method class registered under ``name``."""
        return self.methods.get(name)

    def teacher(self, name: str) -> Callable[..., Any]:
        """The teacher loader registered under ``name``."""
        return self.teachers.get(name)

    def exporter(self, name: str) -> Callable[..., Any]:
        """The exporter registered under ``name``."""
        return self.exporters.get(name)

    def metric(self, name: str) -> Callable[..., Any]:
        """The metric registered under ``name``."""
        return self.metrics.get(name)

    def check_compatible(self, method: type | str, modality: type | str) -> None:
        """Raise a one-sentence :class:`DistillError` unless ``method`` supports ``modality``'s kind.

        Both may be given as registered names or as classes.
        """
        method_cls = self.method(method) if isinstance(method, str) else method
        modality_cls = self.modality(modality) if isinstance(modality, str) else modality
        kinds = frozenset(getattr(method_cls, "kinds", ()) or ())
        kind = getattr(modality_cls, "kind", None)
        if kind in kinds:
            return
        m_name = self._name_of(self.methods, method_cls)
        d_name = self._name_of(self.modalities, modality_cls)
        needs = " or ".join(k for k in KINDS if k in kinds) or "no"
        alternatives = [e.name for e in self.methods.entries() if kind in frozenset(getattr(e.obj, "kinds", ()) or ())]
        if alternatives:
            advice = f"use one of: {', '.join(alternatives)}"
        else:
            advice = f"no installed method supports {kind} modalities; install a method plugin that does (see `distill plugins`)"
        raise DistillError(f"method {m_name!r} needs a {needs} modality, but {d_name!r} is {kind}; {advice}")

    @staticmethod
    def _name_of(registry: Registry[Any], cls: Any) -> str:
        for e in registry.entries():
            if e.obj is cls:
                return e.name
        return getattr(cls, "name", "") or getattr(cls, "__name__", str(cls))

    # -- listing ---------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Everything loaded, as JSON-able data (``distill plugins --json``).

        Shape: ``{"plugins": [{"name", "version", "hooks"}], "modalities": [...],
        "methods": [...], "teachers": [...], "exporters": [...], "metrics": [...],
        "failed": [{"name", "version", "stage", "hook", "error"}]}``; each entry of
        a kind list is ``{"name", "plugin", "description"}`` plus ``"kind"`` for
        modalities and, for methods, ``"kinds"`` (sorted list), ``"max_student_steps"`` (None:
        any) and ``"step_agnostic"`` (one trained student samples at any step count).
        """
        seen: dict[str, dict[str, Any]] = {}
        for info in self._state.plugins:
            if info.name not in seen:
                seen[info.name] = {"name": info.name, "version": info.version, "hooks": self.hooks_of(info.name)}

        def entries(reg: Registry[Any], extra: Callable[[Entry[Any]], dict[str, Any]] | None = None) -> list[dict]:
            out = []
            for e in reg.entries():
                d: dict[str, Any] = {"name": e.name, "plugin": e.plugin, "description": e.description}
                if extra is not None:
                    d.update(extra(e))
                out.append(d)
            return out

        return {
            "plugins": list(seen.values()),
            "modalities": entries(self.modalities, lambda e: {"kind": getattr(e.obj, "kind", None)}),
            "methods": entries(self.methods, lambda e: {
                "kinds": sorted(getattr(e.obj, "kinds", ())),
                "max_student_steps": getattr(e.obj, "max_student_steps", None),
                "step_agnostic": bool(getattr(e.obj, "step_agnostic", False)),
            }),
            "teachers": entries(self.teachers),
            "exporters": entries(self.exporters),
            "metrics": entries(self.metrics),
            "failed": [f.to_dict() for f in self._state.failed],
        }

    # -- loading -----------------------------------------------------------------
    def _builtin_sources(self, modules: Sequence[str]) -> list[_Source]:
        version = _core_version()
        return [
            _Source(
                info=PluginInfo(name=CORE_PLUGIN_NAME, version=version, builtin=True, module=mod),
                load=lambda mod=mod: importlib.import_module(mod),
                optional_missing=mod,
            )
            for mod in modules
        ]

    def _module_sources(self, raw: str) -> list[_Source]:
        """Plugin modules named in ``DISTILL_PLUGIN_MODULES`` (not installed as distributions)."""
        out = []
        for mod in (m.strip() for m in raw.split(",")):
            if mod:
                out.append(_Source(info=PluginInfo(name=mod, version="unknown", module=mod),
                                   load=lambda mod=mod: importlib.import_module(mod)))
        return out

    def _extra_sources(self, extras: Sequence[Any]) -> list[_Source]:
        out = []
        for item in extras:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                name, plugin = item
            else:
                plugin = item
                name = getattr(plugin, "__name__", None) or type(plugin).__name__
            module = getattr(plugin, "__name__", "") if inspect.ismodule(plugin) else type(plugin).__module__
            version = getattr(plugin, "__version__", None)
            if version is None:  # a plugin module inside a package: the package's version
                root = sys.modules.get(str(module).split(".")[0])
                version = getattr(root, "__version__", None)
            version = str(version or "unknown")
            out.append(_Source(info=PluginInfo(name=name, version=version, module=module), load=lambda p=plugin: p))
        return out

    def _entry_point_sources(self, eps: Iterable[Any] | None) -> list[_Source]:
        if eps is None:
            eps = importlib_metadata.entry_points(group=ENTRY_POINT_GROUP)
        eps = [ep for ep in eps if getattr(ep, "group", ENTRY_POINT_GROUP) == ENTRY_POINT_GROUP]
        per_dist: dict[str, int] = {}
        described = []
        for ep in eps:
            dist, version = _dist_of(ep)
            described.append((ep, dist, version))
            per_dist[dist or ep.name] = per_dist.get(dist or ep.name, 0) + 1
        out = []
        matched: set[str] = {_norm(CORE_PLUGIN_NAME)}  # built-ins always load
        for ep, dist, version in described:
            if self.allow is not None:
                wanted = {_norm(a) for a in self.allow}
                hits = {n for n in (ep.name, dist) if n and _norm(n) in wanted}
                if not hits:
                    continue
                matched.update(_norm(h) for h in hits)
            name = dist or ep.name
            if per_dist[name] > 1:
                name = f"{name}:{ep.name}"
            info = PluginInfo(
                name=name,
                version=version,
                module=str(getattr(ep, "value", "")),
                entry_point=ep.name,
                distribution=dist,
            )
            out.append(_Source(info=info, load=ep.load))
        if self.allow is not None:
            missing = [a for a in self.allow if _norm(a) not in matched]
            if missing:
                installed = sorted({d or ep.name for ep, d, _ in described})
                msg = (
                    f"{ENV_ALLOW} names {', '.join(repr(m) for m in missing)}, but no installed plugin has "
                    f"{'that' if len(missing) == 1 else 'those'} entry-point or distribution name; "
                    f"installed plugins: {', '.join(installed) or 'none'}"
                )
                if self.strict:
                    raise DistillError(msg)
                warnings.warn(msg, PluginWarning, stacklevel=3)
        return out

    def _fail(self, info: PluginInfo, stage: str, error: str, hook: str | None = None, exc: BaseException | None = None) -> None:
        failure = PluginFailure(name=info.name, version=info.version, stage=stage, error=error, hook=hook)
        where = f" in {hook}" if hook and stage != "unknown hook" else ""
        msg = f"plugin {info.label} {info.version} failed ({stage}{where}): {error}"
        if self.strict:
            raise DistillError(f"{msg} ({ENV_STRICT} is set, so this is an error)") from exc
        self._state.failed.append(failure)
        remedy = (
            "fix or reinstall distill" if info.builtin
            else f"fix or uninstall it (pip uninstall {info.distribution or info.name}), or leave it out of {ENV_ALLOW}"
        )
        warnings.warn(
            f"{msg}. The rest of distill keeps working; {remedy}. {ENV_STRICT}=1 makes this an error.",
            PluginWarning,
            stacklevel=4,
        )

    def _failed_note(self) -> str:
        if not self._state.failed:
            return ""
        names = ", ".join(f"{f.name} ({f.stage})" for f in self._state.failed)
        return f"Note: {len(self._state.failed)} plugin(s) failed to load: {names}; see `distill plugins`."

    def _withdraw(self, source: _Source) -> None:
        for reg in self._registries.values():
            reg._remove_plugin(source.info.name)
        if source.plugin is not None and self.pm.is_registered(source.plugin):
            self.pm.unregister(source.plugin)

    def _load(self, sources: list[_Source]) -> None:
        loaded: list[_Source] = []
        for i, src in enumerate(sources):
            try:
                plugin = src.load()
            except ModuleNotFoundError as exc:
                if src.optional_missing is not None and exc.name == src.optional_missing:
                    continue  # a built-in placeholder that does not exist yet
                self._fail(src.info, "import", f"{type(exc).__name__}: {exc}", exc=exc)
                continue
            except Exception as exc:  # noqa: BLE001 - guarded loading is the point
                self._fail(src.info, "import", f"{type(exc).__name__}: {exc}", exc=exc)
                continue
            src.plugin = plugin
            pm_name = f"{i}:{src.info.name}:{src.info.module}"
            if self.pm.is_registered(plugin):
                other = self._by_pm_name.get(self.pm.get_name(plugin) or "")
                self._fail(
                    src.info, "register",
                    f"it is the same object as plugin {other.label if other else '?'} ({src.info.module}); "
                    "register each plugin module once",
                )
                src.plugin = None
                continue
            try:
                self.pm.register(plugin, name=pm_name)
            except pluggy.PluginValidationError as exc:
                self._fail(
                    src.info, "register",
                    f"{exc}; hook arguments must be named as in distill.hookspecs, "
                    "e.g. distill_register_methods(register)",
                    exc=exc,
                )
                src.plugin = None
                continue
            except Exception as exc:  # noqa: BLE001
                self._fail(src.info, "register", f"{type(exc).__name__}: {exc}", exc=exc)
                src.plugin = None
                continue
            self._by_pm_name[pm_name] = src.info
            problem = self._unknown_hooks(plugin)
            if problem is not None:
                hook, message = problem
                self._withdraw(src)
                self._fail(src.info, "unknown hook", message, hook=hook)
                continue
            loaded.append(src)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:  # pragma: no cover - _unknown_hooks catches these first
            raise DistillError(f"plugin hook validation failed: {exc}") from exc

        by_plugin = {id(s.plugin): s for s in loaded}
        dead: set[int] = set()
        for hook_name in hookspecs.HOOK_NAMES:
            registry = self._registries[hook_name]
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                src = by_plugin.get(id(impl.plugin))
                if src is None or id(impl.plugin) in dead:
                    continue
                if impl.wrapper or impl.hookwrapper:
                    dead.add(id(impl.plugin))
                    self._withdraw(src)
                    self._fail(src.info, "register", "distill hooks do not support wrapper=True / hookwrapper=True", hook=hook_name)
                    continue
                registry._current = src.info
                try:
                    args = {"register": registry}
                    result = impl.function(**{a: args[a] for a in impl.argnames})
                except Exception as exc:  # noqa: BLE001
                    dead.add(id(impl.plugin))
                    self._withdraw(src)
                    self._fail(src.info, "hook", _describe_exc(exc), hook=hook_name, exc=exc)
                    continue
                finally:
                    registry._current = None
                if result is not None:
                    warnings.warn(
                        f"plugin {src.info.label}: {hook_name} returned {type(result).__name__}, which is ignored; "
                        f"register things with register.add(name, obj) and return None",
                        PluginWarning,
                        stacklevel=2,
                    )
        self._state.plugins = [s.info for s in loaded if id(s.plugin) not in dead]

    def _unknown_hooks(self, plugin: Any) -> tuple[str, str] | None:
        """A misspelt hook (or a hook function without ``@hookimpl``) in ``plugin``, if any."""
        specs = list(hookspecs.HOOK_NAMES)
        for caller in self.pm.get_hookcallers(plugin) or []:
            if caller.has_spec():
                continue
            impls = [i for i in caller.get_hookimpls() if i.plugin is plugin and not i.optionalhook]
            if impls:
                name = caller.name
                return name, (
                    f"implements unknown hook {name!r}; {_suggest(name, specs)}"
                    f"distill's hooks are: {', '.join(specs)}"
                )
        registered = {c.name for c in self.pm.get_hookcallers(plugin) or []}
        for attr in dir(plugin):
            if not attr.startswith("distill_") or attr in registered:
                continue
            try:
                value = getattr(plugin, attr)
            except Exception:  # noqa: BLE001
                continue
            if not callable(value) or inspect.isclass(value):
                continue
            if attr in specs:
                return attr, (
                    f"defines {attr} without @hookimpl, so it is never called; "
                    "decorate it: `from distill import hookimpl` then `@hookimpl`"
                )
            close = difflib.get_close_matches(attr, specs, n=1, cutoff=0.8)
            if close:
                return attr, (
                    f"defines {attr} without @hookimpl and with a misspelt name; did you mean {close[0]!r}? "
                    "decorate it with `@hookimpl` (from distill import hookimpl)"
                )
        return None


# --------------------------------------------------------------------------- module API

_manager: PluginManager | None = None
_lock = threading.Lock()


def get_manager(reload: bool = False) -> PluginManager:
    """The process-wide :class:`PluginManager`, built on first use (``reload=True`` rebuilds it)."""
    global _manager
    with _lock:
        if _manager is None or reload:
            _manager = PluginManager()
        return _manager


def check_compatible(method: type | str, modality: type | str, manager: PluginManager | None = None) -> None:
    """Raise a one-sentence :class:`DistillError` if ``method`` cannot run on ``modality``.

    See :meth:`PluginManager.check_compatible`; uses :func:`get_manager` by default
    (its registered methods are the alternatives the message suggests).
    """
    (manager or get_manager()).check_compatible(method, modality)


def format_table(described: Mapping[str, Any]) -> str:
    """Render :meth:`PluginManager.describe` output as plain-text tables for people.

    Plain text (no colour, no terminal control codes), so it reads the same in a
    terminal, a pipe or a log file.
    """
    blocks: list[str] = []

    def table(title: str, headers: list[str], rows: list[list[str]]) -> None:
        if not rows:
            blocks.append(f"{title}: none")
            return
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        lines = [f"{title} ({len(rows)})"]
        lines.append("  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
        lines.append("  " + "  ".join("-" * w for w in widths))
        for r in rows:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        blocks.append("\n".join(lines))

    def short(hook: str) -> str:
        return hook.removeprefix("distill_register_")

    table(
        "Plugins",
        ["name", "version", "hooks"],
        [[p["name"], str(p["version"]), ", ".join(short(h) for h in p.get("hooks", [])) or "-"]
         for p in described.get("plugins", [])],
    )
    table(
        "Modalities",
        ["name", "kind", "plugin", "description"],
        [[e["name"], str(e.get("kind")), e["plugin"], e.get("description", "")] for e in described.get("modalities", [])],
    )
    table(
        "Methods",
        ["name", "kinds", "plugin", "description"],
        [[e["name"], ", ".join(e.get("kinds", [])), e["plugin"], e.get("description", "")]
         for e in described.get("methods", [])],
    )
    for key, title in (("teachers", "Teacher loaders"), ("exporters", "Exporters"), ("metrics", "Metrics")):
        table(
            title,
            ["name", "plugin", "description"],
            [[e["name"], e["plugin"], e.get("description", "")] for e in described.get(key, [])],
        )
    failed = described.get("failed", [])
    if failed:
        lines = [f"Failed plugins ({len(failed)})"]
        for f in failed:
            where = f" in {f['hook']}" if f.get("hook") and f.get("stage") != "unknown hook" else ""
            lines.append(f"  {f['name']} {f['version']} ({f['stage']}{where}): {f['error']}")
        lines.append(f"  (the rest keep working; set {ENV_STRICT}=1 to make failures errors)")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
