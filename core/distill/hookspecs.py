"""The plugin contract: one documented hook per extension point.

distill is extended through `pluggy <https://pluggy.readthedocs.io>`_ under the
project name ``"distill"``. A plugin is any module (or object) exposing functions
decorated with :data:`hookimpl` whose names are the hooks below; third-party
distributions advertise their plugin module in the ``distill`` entry-point group::

    [project.entry-points.distill]
    audio = "distill_audio.plugin"

Every hook receives a typed ``register`` object (a :class:`distill.plugins.Registry`)
and adds named things to it with ``register.add(name, obj, *, description="")``.
Hooks return ``None``. The plugin manager records which plugin registered each
name, rejects duplicate names (naming both plugins) and validates each object.
The built-in methods of distill are registered through these same hooks.

Stability promise: hook signatures only ever *gain* arguments. pluggy passes a
hook implementation only the arguments it names, so an implementation written
against today's signature, ``distill_register_methods(register)``, keeps working
when a later release adds arguments. Hooks are never renamed or removed within a
major version.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from distill.plugins import Registry

PROJECT_NAME = "distill"

#: Marks a hook specification (used only by distill itself).
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marks a hook implementation in a plugin: ``from distill import hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def distill_register_modalities(register: Registry[type]) -> None:
    """Register modality adapters: the data a generator produces.

    What to register: a *class* (not an instance), usually a subclass of
    :class:`distill.Modality`, under a short lower-case name that configs use
    (``modality: audio``).

    Contract of the registered class:

    * class attribute ``kind``: ``"continuous"`` (Gaussian diffusion / flow over
      real tensors) or ``"discrete"`` (masked or uniform token diffusion);
    * class attribute ``name``: equal to the registered name (or left empty);
    * class attribute ``description``: one line shown by ``distill plugins``;
    * the :class:`distill.Modality` interface: sample shape, optional
      ``encode``/``decode``, conditioning and its null condition, data,
      reference networks per role, a bundled teacher, ``evaluate`` and
      ``save_samples``.

    The modality's ``kind`` decides which methods bind to it (see
    :meth:`distill.plugins.PluginManager.check_compatible`).

    Example::

        from distill import Modality, hookimpl

        class Audio(Modality):
            name = "audio"
            kind = "continuous"
            description = "16 kHz waveforms and mel spectrograms"

        @hookimpl
        def distill_register_modalities(register):
            register.add("audio", Audio)
    """


@hookspec
def distill_register_methods(register: Registry[type]) -> None:
    """Register distillation methods (objectives).

    What to register: a *class*, usually a subclass of :class:`distill.Method`,
    under the name configs use (``method: dmd2``).

    Contract of the registered class:

    * class attribute ``kinds``: a non-empty ``frozenset`` drawn from
      ``{"continuous", "discrete"}``: the modality kinds the method supports;
    * class attribute ``name``: equal to the registered name (or left empty);
    * class attribute ``description``: one line shown by ``distill plugins``;
    * the :class:`distill.Method` interface: ``roles()``, ``phases(step)``,
      ``loss(phase, batch, roles) -> Losses`` (pure tensor code) and the student
      sampler it trains for. A method must compose with any modality of a
      supported kind through the Denoiser and Modality contracts alone.

    Example::

        from distill import Method, hookimpl

        class MyMethod(Method):
            name = "mine"
            kinds = frozenset({"continuous"})
            description = "regress the student onto the teacher's ODE endpoint"

        @hookimpl
        def distill_register_methods(register):
            register.add("mine", MyMethod)
    """


@hookspec
def distill_register_teachers(register: Registry[Callable[..., Any]]) -> None:
    """Register teacher loaders: how to build a pretrained teacher.

    What to register: a callable ``loader(config, modality) -> distill.Denoiser``
    under the name configs use in ``teacher.loader`` (e.g. ``diffusers``,
    ``lerobot``, ``safetensors``). ``config`` is the run's ``teacher`` config
    section (with at least ``path``); ``modality`` is the instantiated modality.
    The loader reads the model's own scheduler/config to pick the process and
    prediction type, so methods never branch on them. It must not unpickle
    untrusted data and must not reach the network unless the user asked for it.

    Example::

        from distill import Denoiser, hookimpl, make_process

        def load_my_teacher(config, modality):
            net = MyNet.from_safetensors(config.path)
            return Denoiser(net, make_process("flow"), prediction="flow")

        @hookimpl
        def distill_register_teachers(register):
            register.add("mynet", load_my_teacher, description="MyNet safetensors checkpoints")
    """


@hookspec
def distill_register_exporters(register: Registry[Callable[..., Any]]) -> None:
    """Register exporters: how a trained student leaves distill (``distill export``).

    What to register: a callable ``exporter(run_dir, out, **options) -> list[Path]``
    under a format name (``distill export --format <name>``). ``run_dir`` is a
    finished run directory (per-role safetensors + JSON sidecar); ``out`` is the
    destination path. It returns the files it wrote and writes them atomically.

    Example::

        from distill import hookimpl

        def export_onnx(run_dir, out, **options):
            ...
            return [out]

        @hookimpl
        def distill_register_exporters(register):
            register.add("onnx", export_onnx, description="ONNX graph of the student")
    """


@hookspec
def distill_register_metrics(register: Registry[Callable[..., Any]]) -> None:
    """Register metrics that evaluation and ``distill bench`` can compute by name.

    What to register: a callable ``metric(samples, reference, **context) ->
    dict[str, float]`` under the metric's name (``eval.metrics: [my_metric]``).
    ``samples`` are generated samples in model space, ``reference`` a
    :class:`distill.DataBatch` of real data; ``context`` may carry the modality
    and the teacher's samples for paired metrics. Return plain floats, named so
    that larger/smaller-is-better is clear (e.g. ``fd``, ``accuracy``).

    Example::

        from distill import hookimpl

        def energy_distance(samples, reference, **context):
            ...
            return {"energy_distance": value}

        @hookimpl
        def distill_register_metrics(register):
            register.add("energy_distance", energy_distance)
    """


#: The hooks, in the order the manager calls them.
HOOK_NAMES: tuple[str, ...] = (
    "distill_register_modalities",
    "distill_register_methods",
    "distill_register_teachers",
    "distill_register_exporters",
    "distill_register_metrics",
)
