"""Plugin manager: built-ins and ``lcpress`` entry points, registered one way.

:func:`get_registry` builds, once and lazily, the plugin manager and the
registry of what plugins contribute — scheme and cost-model classes, realized
module classes allowed in saved files, and CLI commands:

1. add the hook specs (:mod:`lcpress.hookspecs`);
2. register the built-in modules of :data:`DEFAULT_PLUGINS`;
3. load every entry point of the group ``lcpress`` — unless
   ``LCPRESS_DISABLE_PLUGIN_AUTOLOAD`` is set, and only the names in
   ``LCPRESS_LOAD_PLUGINS=a,b`` when that is set (a name there that matches
   no entry point is an error, not silence);
4. ``check_pending()`` so a misspelled hook name is an error, not silence;
5. call the registration hooks and record which plugin registered what.

A name registered twice (or a module class named like one of lcpress's
own), a hook function whose arguments are not the hook's, or a plugin that
raises while loading or registering, raises :class:`PluginError` naming the
plugin and its package — for an entry point, with the switches that run
without it. ``LCPRESS_TRACE_PLUGINS=1`` logs every hook call.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.metadata
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

import pluggy
from torch import nn

from lcpress import hookspecs
from lcpress.core.costmodel import CostModel
from lcpress.core.guard import use_labels
from lcpress.core.scheme import Scheme
from lcpress.errors import PluginError
from lcpress.nn.architecture import ALLOWED

log = logging.getLogger("lcpress.plugins")

ENTRY_POINT_GROUP = "lcpress"

#: Built-in plugin modules, registered exactly like third-party ones.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "lcpress.plugins.low_rank",
    "lcpress.plugins.alds",
    "lcpress.plugins.prune",
    "lcpress.plugins.channels",
    "lcpress.plugins.quantize",
    "lcpress.plugins.additive",
    "lcpress.plugins.sequential",
    "lcpress.costmodels.params",
    "lcpress.costmodels.flops",
    "lcpress.costmodels.storage",
    "lcpress.costmodels.cpu_latency",
    "lcpress.costmodels.gpu_latency",
    "lcpress.costmodels.gpu_energy",
)

T = TypeVar("T")


@dataclass(frozen=True)
class Origin:
    """Where a registered class came from: plugin name, distribution, version."""

    plugin: str
    package: str
    version: str


@dataclass
class Kind(Generic[T]):
    """Classes of one kind (schemes, or cost models) by name, with their origin."""

    label: str
    base: type
    classes: dict[str, type] = field(default_factory=dict)
    origins: dict[str, Origin] = field(default_factory=dict)
    #: why an installed plugin may be missing from this registry (entry points LCPRESS_LOAD_PLUGINS left out)
    note: str = ""

    def add(self, cls: type, origin: Origin) -> None:
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise PluginError(
                f"plugin {origin.plugin!r} registered {cls!r} as a {self.label}, "
                f"but it does not subclass lcpress.{self.base.__name__}"
            )
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {origin.plugin!r}: {self.label} class {cls.__name__} has no 'name' string")
        if name in self.classes:
            first = self.origins[name]
            raise PluginError(
                f"{self.label} name {name!r} is registered twice: by plugin {first.plugin!r} "
                f"({first.package} {first.version}) and by plugin {origin.plugin!r} "
                f"({origin.package} {origin.version}). Rename one of them or uninstall one package."
            )
        self.classes[name] = cls
        self.origins[name] = origin

    def get(self, name: str) -> type:
        try:
            return self.classes[name]
        except KeyError:
            known = ", ".join(sorted(self.classes)) or "(none)"
            raise PluginError(
                f"no {self.label} named {name!r}; registered: {known}. {self.note}"
                f"A plugin package adds one through the 'lcpress' entry-point group "
                f"(see docs/plugins.md); `lcpress plugins` lists what is installed."
            ) from None


@dataclass(frozen=True)
class Command:
    """A CLI command a plugin adds: ``lcpress NAME``."""

    name: str
    run: Callable[[Any], "int | None"]
    help: str = ""
    arguments: Callable[[Any], None] | None = None


@dataclass
class Registry:
    """Everything plugins contribute in this process, with where each came from."""

    manager: pluggy.PluginManager
    schemes: Kind[Scheme]
    cost_models: Kind[CostModel]
    #: realized-module classes plugins allow in saved files: name → (class, constructor-arguments reader)
    modules: dict[str, tuple[type[nn.Module], Callable[[nn.Module], dict[str, Any]]]] = field(default_factory=dict)
    commands: dict[str, Command] = field(default_factory=dict)
    origins: dict[tuple[str, str], Origin] = field(default_factory=dict)  # ("module" | "command", name) → origin

    def scheme(self, name: str) -> type[Scheme]:
        return self.schemes.get(name)

    def cost_model(self, name: str) -> type[CostModel]:
        return self.cost_models.get(name)

    def add_module(self, cls: type, arguments: Callable[[nn.Module], dict[str, Any]], origin: Origin) -> None:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)) or not callable(arguments):
            raise PluginError(f"plugin {origin.plugin!r}: register(ModuleClass, arguments) needs an nn.Module "
                              f"subclass and a function returning its constructor arguments, got {cls!r}")
        builtin = ALLOWED.get(cls.__name__)
        if builtin is not None:  # saved files name classes by name: the built-in would silently win on loading
            raise PluginError(
                f"plugin {origin.plugin!r} ({origin.package} {origin.version}) registered module class "
                f"{cls.__module__}.{cls.__qualname__}, but lcpress already rebuilds saved modules named "
                f"{cls.__name__!r} as its own {builtin[0].__module__}.{builtin[0].__qualname__}; rename your class")
        self._claim("module", cls.__name__, origin)
        self.modules[cls.__name__] = (cls, arguments)

    def add_command(self, command: Command, origin: Origin) -> None:
        if not command.name or not isinstance(command.name, str) or not callable(command.run):
            raise PluginError(f"plugin {origin.plugin!r}: register(name, run, ...) needs a name and a callable")
        self._claim("command", command.name, origin)
        self.commands[command.name] = command

    def _claim(self, kind: str, name: str, origin: Origin) -> None:
        first = self.origins.get((kind, name))
        if first is not None:
            raise PluginError(
                f"{kind} name {name!r} is registered twice: by plugin {first.plugin!r} ({first.package} "
                f"{first.version}) and by plugin {origin.plugin!r} ({origin.package} {origin.version}). "
                f"Rename one of them or uninstall one package."
            )
        self.origins[(kind, name)] = origin


_registry: Registry | None = None
#: Plugin objects registered at run time by the active :func:`using_plugins` blocks.
_runtime_plugins: tuple[Any, ...] = ()


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    if _registry is None:
        _registry = build_registry(extra_plugins=_runtime_plugins)
    return _registry


def reset_registry() -> None:
    """Forget the registry so the next :func:`get_registry` rebuilds it (tests, new installs)."""
    global _registry
    _registry = None


@contextlib.contextmanager
def using_plugins(*plugins: Any) -> Iterator[Registry]:
    """Register plugin objects for the duration of a ``with`` block.

    For tests and notebooks: the process registry is rebuilt with ``plugins``
    added (built-ins and entry points as usual), and restored afterwards::

        with lcpress.core.registry.using_plugins(MyPlugin()):
            lcpress.compress(model, {"tasks": [{"layers": ["*"], "cost": "my_cost"}]}, ...)

    A plugin object is a module or any object with ``@lcpress.hookimpl``
    functions; its ``__name__`` (else its class name) names it in listings and
    errors. Blocks nest: an inner block keeps the outer block's plugins. A name
    that collides with a registered one raises :class:`PluginError` on entry.
    """
    global _registry, _runtime_plugins
    saved = (_registry, _runtime_plugins)
    try:
        _runtime_plugins = _runtime_plugins + tuple(plugins)
        _registry = build_registry(extra_plugins=_runtime_plugins)
        yield _registry
    finally:
        _registry, _runtime_plugins = saved


def origin_of(cls: type) -> Origin | None:
    """Where a registered scheme or cost-model class came from; None if the registry does not hold it.

    For error messages that name the plugin at fault; never builds the registry.
    """
    if _registry is None:
        return None
    name = getattr(cls, "name", None)
    for table in (_registry.schemes, _registry.cost_models):
        if table.classes.get(name) is cls:
            return table.origins[name]
    return None


def plugin_label(obj: Any) -> str:
    """``"scheme 'x' (plugin 'p', package 1.0)"`` for a scheme or cost model (instance or class)."""
    cls = obj if isinstance(obj, type) else type(obj)
    kind = "scheme" if issubclass(cls, Scheme) else "cost model"
    text = f"{kind} {getattr(cls, 'name', cls.__name__)!r}"
    origin = origin_of(cls)
    if origin is None:
        return text
    package = f"{origin.package} {origin.version}".strip()
    return f"{text} (plugin {origin.plugin!r}, {package})"


def build_registry(extra_plugins: tuple[Any, ...] = (), autoload: bool | None = None) -> Registry:
    """A fresh plugin manager and registry (see the module docstring for the steps)."""
    pm = pluggy.PluginManager("lcpress")
    pm.add_hookspecs(hookspecs)
    if os.environ.get("LCPRESS_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: log.warning("%s", msg.rstrip()))
        pm.enable_tracing()
    origins: dict[str, Origin] = {}
    for module_name in DEFAULT_PLUGINS:
        _register(pm, importlib.import_module(module_name), module_name, _lcpress_origin(module_name), origins)
    if autoload is None:
        autoload = not os.environ.get("LCPRESS_DISABLE_PLUGIN_AUTOLOAD")
    note = _load_entry_points(pm, origins) if autoload else ""
    for plugin in extra_plugins:
        if pm.is_registered(plugin):
            continue
        name = _unique_name(pm, getattr(plugin, "__name__", type(plugin).__name__))
        _register(pm, plugin, name, Origin(name, "(registered at run time)", ""), origins)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        origin = origins.get(pm.get_name(exc.plugin) or "", Origin("?", "unknown", ""))
        raise PluginError(f"plugin {origin.plugin!r} ({origin.package} {origin.version}) implements a hook lcpress "
                          f"does not define: {exc}.{_without(origin)}") from exc
    registry = _collect(pm, origins)
    registry.schemes.note = registry.cost_models.note = note
    return registry


def _unique_name(pm: pluggy.PluginManager, name: str) -> str:
    """``name``, or ``name#2``, ``name#3`` … when another plugin object holds it."""
    candidate, n = name, 1
    while pm.has_plugin(candidate):
        n += 1
        candidate = f"{name}#{n}"
    return candidate


def _lcpress_origin(plugin: str) -> Origin:
    return Origin(plugin, "lcpress", _version("lcpress"))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _register(pm: pluggy.PluginManager, plugin: Any, name: str, origin: Origin, origins: dict[str, Origin]) -> None:
    if pm.has_plugin(name):
        return
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:  # a hook function whose arguments are not the hook's
        raise PluginError(
            f"plugin {name!r} ({origin.package} {origin.version}) does not fit lcpress's hooks: "
            f"{'; '.join(str(exc).splitlines())}; the hooks and their arguments are in docs/plugins.md "
            f"(Hook reference).{_without(origin)}") from None
    origins[name] = origin


def _load_entry_points(pm: pluggy.PluginManager, origins: dict[str, Origin]) -> str:
    """Load the entry points LCPRESS_LOAD_PLUGINS allows (all when unset); returns what the filter left out, in words."""
    points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    allowed = _allowed({ep.name for ep in points})
    for ep in points:
        if allowed is not None and ep.name not in allowed:
            continue
        dist = getattr(ep, "dist", None)
        package = dist.metadata["Name"] if dist is not None else "unknown"
        version = dist.version if dist is not None else "unknown"
        origin = Origin(ep.name, package, version)
        try:
            plugin = ep.load()
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # a plugin's sys.exit() must not end lcpress silently
            what = {"SystemExit": "called sys.exit()", "KeyboardInterrupt": "was interrupted"}.get(
                type(exc).__name__, "raised")
            raise PluginError(
                f"plugin {ep.name!r} (entry point {ep.value!r} of package {package} {version}) "
                f"{what} while loading: {type(exc).__name__}: {exc}.{_without(origin)}"
            ) from exc
        _register(pm, plugin, ep.name, origin, origins)
    left_out = sorted({ep.name for ep in points} - allowed) if allowed is not None else []
    if not left_out:
        return ""
    return (f"LCPRESS_LOAD_PLUGINS={os.environ.get('LCPRESS_LOAD_PLUGINS')} is set, so the installed entry point(s) "
            f"{', '.join(left_out)} were not loaded. ")


def _allowed(installed: set[str]) -> set[str] | None:
    """The entry points LCPRESS_LOAD_PLUGINS names (None: unset, load all); a name that matches none is an error.

    A misspelled name would otherwise leave its plugin out silently, and the run would fail later with "no
    scheme named …" far from the cause.
    """
    allow = os.environ.get("LCPRESS_LOAD_PLUGINS")
    if not allow:
        return None
    names = {n.strip() for n in allow.split(",") if n.strip()}
    for name in sorted(names - installed):
        close = difflib.get_close_matches(name, sorted(installed), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise PluginError(f"LCPRESS_LOAD_PLUGINS={allow} names {name!r}, which is no installed entry point of the "
                          f"'lcpress' group{hint}; installed: {', '.join(sorted(installed)) or '(none)'}")
    return names


def _without(origin: Origin) -> str:
    """How to run without a broken entry-point plugin: the switches, spelled out for this installation."""
    installed = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    if origin.plugin not in installed or origin.package in ("lcpress", "(registered at run time)"):
        return ""
    others = sorted(installed - {origin.plugin})
    keep = f"LCPRESS_LOAD_PLUGINS={','.join(others)} to load only the others, or " if others else ""
    return (f" Fix or uninstall {origin.package}, or run without it: {keep}LCPRESS_DISABLE_PLUGIN_AUTOLOAD=1 to "
            f"run without third-party plugins.")


def _collect(pm: pluggy.PluginManager, origins: dict[str, Origin]) -> Registry:
    registry = Registry(pm, Kind("scheme", Scheme), Kind("cost model", CostModel))
    tracing = bool(os.environ.get("LCPRESS_TRACE_PLUGINS"))
    recorders: dict[str, Callable[[Origin], Callable[..., None]]] = {
        "lcpress_register_schemes": lambda o: lambda cls: registry.schemes.add(cls, o),
        "lcpress_register_cost_models": lambda o: lambda cls: registry.cost_models.add(cls, o),
        "lcpress_register_modules": lambda o: lambda cls, arguments: registry.add_module(cls, arguments, o),
        "lcpress_register_commands": lambda o: lambda name, run, help="", arguments=None: registry.add_command(
            Command(name, run, help, arguments), o),
    }
    for hook_name, recorder in recorders.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            origin = origins.get(impl.plugin_name, Origin(impl.plugin_name, "unknown", ""))
            # Called one implementation at a time (to know who registered what), so
            # pluggy's own tracing does not see these calls: trace them here.
            if tracing:
                log.warning("%s: calling plugin %r (%s %s)", hook_name, origin.plugin, origin.package, origin.version)
            try:
                impl.function(register=recorder(origin))
            except PluginError:
                raise
            except (Exception, SystemExit) as exc:
                raise PluginError(
                    f"plugin {origin.plugin!r} ({origin.package} {origin.version}) raised in {hook_name}: "
                    f"{type(exc).__name__}: {exc}.{_without(origin)}"
                ) from exc
    return registry


use_labels(plugin_label)  # the guard below the base classes names plugins as the registry knows them
