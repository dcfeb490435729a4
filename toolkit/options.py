"""Typed option dataclasses, validated when they are built.

Every option lcpress reads — the run config, a scheme's options, a cost
model's options — is a dataclass deriving from :class:`Options`. Building one
from a plain dict (parsed YAML) checks every key against the fields, every value
against the field's type hint, and reports problems with the key path::

    tasks[0].options.rank_multiple: expected int, got 'eight'

Ranges are declared with the field — ``option(8, help=..., ge=1)``, ``gt``,
``le``, ``lt``, ``choices`` — and checked whenever an options object is
built (from YAML or in Python); ``lcpress options`` and ``lcpress plugins
--options`` print them. Rules that involve several fields ("give ``ratio`` or
``value``, not both") go in ``validate()``, raising :class:`ConfigError`
through :meth:`Options.fail` so the message carries the key path too.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from lcpress.errors import ConfigError, PluginContractError

T = TypeVar("T", bound="Options")


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The values a numeric option (or every entry of a list option) may take.

    ``ge``/``gt`` and ``le``/``lt`` bound it from below and above; ``choices``
    lists the only values allowed; ``nonempty`` asks a list for at least one
    entry. ``None`` passes every bound: an optional option that is unset is
    not out of range.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    nonempty: bool = False

    def __bool__(self) -> bool:
        return self != Bounds()

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is out of bounds, or None."""
        if isinstance(value, (list, tuple)):
            if self.nonempty and not value:
                return "give at least one value"
            for i, item in enumerate(value):
                why = self._scalar(item)
                if why:
                    return f"entry {i} {why}"
            return None
        return self._scalar(value)

    def _scalar(self, v: Any) -> str | None:
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) and self.choices is None:
            return None
        if self.choices is not None:
            return None if v in self.choices else f"must be one of {_or(self.choices)}, got {v!r}"
        low_ok = (self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
        high_ok = (self.le is None or v <= self.le) and (self.lt is None or v < self.lt)
        return None if low_ok and high_ok else f"must be {self._range_text()}, got {v!r}"

    def text(self) -> str:
        """The allowed range in words: "at least 1", "positive", "in (0, 1]", "one of 8, 16 or 32"."""
        words = self._range_text()
        if self.nonempty:
            return "a non-empty list" if words == "any value" else f"{words}; a non-empty list"
        return words

    def _range_text(self) -> str:
        if self.choices is not None:
            return f"one of {_or(self.choices)}"
        low = ("[", self.ge) if self.ge is not None else ("(", self.gt) if self.gt is not None else None
        high = ("]", self.le) if self.le is not None else (")", self.lt) if self.lt is not None else None
        if low and high:
            return f"in {low[0]}{_num(low[1])}, {_num(high[1])}{high[0]}"
        if low:
            if low[1] == 0:
                return "non-negative" if low[0] == "[" else "positive"
            return f"at least {_num(low[1])}" if low[0] == "[" else f"greater than {_num(low[1])}"
        if high:
            return f"at most {_num(high[1])}" if high[0] == "]" else f"less than {_num(high[1])}"
        return "any value"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _or(values: tuple[Any, ...]) -> str:
    texts = [str(v) for v in values]
    return texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " or " + texts[-1]


def option(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
           ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
           choices: tuple[Any, ...] | list[Any] | None = None, nonempty: bool = False) -> Any:
    """A dataclass field with a help line and, optionally, the range its value must lie in.

    The help line and the range are shown by ``lcpress options``, ``lcpress
    plugins --options`` and the docs; the range is checked whenever the options
    are built. For a list option the range applies to every entry.
    """
    bounds = Bounds(ge, gt, le, lt, tuple(choices) if choices is not None else None, nonempty)
    metadata = {"help": help, "bounds": bounds}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class OptionRow:
    """One option as listings show it: name, type, default, allowed range and help line."""

    name: str
    type: str
    default: Any
    bounds: str
    help: str


@dataclasses.dataclass
class Options:
    """Base of every options dataclass: strict ``from_dict``, declared bounds, and ``validate``."""

    def __post_init__(self) -> None:
        problem = type(self).default_problem()
        if problem:  # the declaring plugin's bug: never reported as a key of the user's config
            raise PluginContractError(f"{problem}; fix the default where the option is declared")
        for f in dataclasses.fields(self):
            bounds = f.metadata.get("bounds")
            if bounds:
                why = bounds.problem(getattr(self, f.name))
                if why:
                    self.fail(f.name, why)
        self.validate()

    #: keys users write for a field under another name (``learning_rate`` for ``lr``), named in the error
    SYNONYMS: typing.ClassVar[dict[str, str]] = {}

    @classmethod
    def hint(cls, key: str, value: Any) -> str | None:
        """Advice for an unknown ``key`` given with ``value``, e.g. the field it belongs under; None: none.

        Override it where a slip is common and its fix is known (``bits: 4`` for ``k: 16``); the error then
        reads ``tasks[0].options.bits: unknown key (<hint>); allowed keys: …``.
        """
        return f"did you mean {cls.SYNONYMS[key]!r}?" if key in cls.SYNONYMS else None

    @classmethod
    def scalar_hint(cls, value: Any) -> str | None:
        """Advice when a single value stands where this mapping belongs (``target: 0.3``); None: none."""
        return None

    @classmethod
    def default_problem(cls) -> str | None:
        """What is wrong with a default this class declares — of another type than its field, or outside its
        declared range — or None. Checked whenever options are built: a default that breaks its own declaration
        would otherwise reach users as an error in a key they never wrote."""
        return _default_problem(cls)

    def validate(self) -> None:
        """Check value ranges; override and call :meth:`fail` on a bad value."""

    def fail(self, field: str, message: str) -> typing.NoReturn:
        """Raise a :class:`ConfigError` for ``field`` of this options object."""
        raise ConfigError(f"{_join(getattr(self, '_where', ''), field)}: {message}")

    @classmethod
    def from_dict(cls: type[T], data: Any, path: str = "") -> T:
        """Build and validate from a parsed-YAML mapping; ``path`` prefixes errors."""
        return _build_dataclass(cls, data, path)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-compatible dict (round-trips through :meth:`from_dict`)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def rows(cls) -> list[OptionRow]:
        """One :class:`OptionRow` per field, for listings and docs."""
        hints = get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            default = _default(f)
            default = "(required)" if default is dataclasses.MISSING else _plain(default)
            bounds = f.metadata.get("bounds")
            rows.append(OptionRow(f.name, _type_name(hints[f.name]), default, bounds.text() if bounds else "",
                                  f.metadata.get("help", "")))
        return rows


def _default(f: dataclasses.Field) -> Any:
    """A field's default value (built from its factory), or ``dataclasses.MISSING`` for a required one."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


@functools.cache
def _default_problem(cls: type[Options]) -> str | None:
    """:meth:`Options.default_problem`, once per class."""
    try:
        hints = get_type_hints(cls)
    except Exception:  # a hint that cannot be resolved here: nothing to check the defaults against
        return None
    for f in dataclasses.fields(cls):
        value = _default(f)
        if value is dataclasses.MISSING:
            continue
        said = f"the default of option {f.name!r} ({value!r}) of {cls.__qualname__}"
        try:
            _coerce(hints[f.name], value, f.name)
        except ConfigError:
            return f"{said} is not of its declared type, {_type_name(hints[f.name])}"
        except TypeError:  # a hint the checker cannot test values against (a generic alias)
            pass
        bounds = f.metadata.get("bounds")
        if bounds and bounds.problem(value):
            return f"{said} is outside its declared range ({bounds.text()})"
    return None


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _plain(value: Any) -> Any:
    if isinstance(value, Options):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _build_dataclass(cls: type[T], data: Any, path: str) -> T:
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        advice = cls.scalar_hint(data) if isinstance(data, (int, float, str)) else None
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__} {data!r}"
                          + (f"; {advice}" if advice else ""))
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        advice = f"did you mean {close[0]!r}?" if close else cls.hint(str(key), data[key])
        hint = f" ({advice})" if advice else ""
        if not fields:
            raise ConfigError(f"{_join(path, key)}: {path or 'this'} takes no options; leave it out")
        raise ConfigError(f"{_join(path, key)}: unknown key{hint}; allowed keys: {', '.join(sorted(fields))}")
    hints = get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce_field(hints, name, data, _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise ConfigError(f"{_join(path, name)}: required key is missing ({f.metadata.get('help', '')})")
    obj = cls.__new__(cls)
    object.__setattr__(obj, "_where", path)
    try:
        obj.__init__(**kwargs)  # type: ignore[misc]
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path or 'config'}: {exc}") from exc
    return obj


def _coerce_field(hints: dict[str, Any], name: str, data: dict[str, Any], path: str) -> Any:
    """One key's value, checked; a value of the wrong type that a sibling key takes names that key.

    ``keep: 0.2`` where ``keep`` counts weights and ``keep_fraction`` takes a fraction is a slip worth naming.
    """
    try:
        return _coerce(hints[name], data[name], path)
    except ConfigError as exc:
        for other in hints:
            if other != name and other.startswith(f"{name}_") and other not in data:
                try:
                    _coerce(hints[other], data[name], path)
                except ConfigError:
                    continue
                raise ConfigError(f"{exc} (did you mean {other}: {data[name]!r}?)") from None
        raise


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against the type hint ``tp``; convert only lossless cases."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error is the useful one
            return _coerce(options[0], value, path)
        for arg in options:
            try:
                return _coerce(arg, value, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path}: {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (list, tuple):
        (item_tp, *_rest) = get_args(tp) or (Any,)
        if isinstance(value, (str, int, float)) and item_tp is str and isinstance(value, str):
            value = [value]
        if isinstance(value, dict) and isinstance(item_tp, type) and issubclass(item_tp, Options):
            raise ConfigError(f"{path}: expected a list, got one mapping; make it a list item ('- ' before its "
                              f"first key in YAML, [{{...}}] in Python)")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        items = [_coerce(item_tp, v, _join(path, i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if isinstance(tp, type) and issubclass(tp, Options):
        return _build_dataclass(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{path}: expected a number, got {value!r}") from None
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if isinstance(value, tp):
        return value
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
