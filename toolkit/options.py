"""Typed option dataclasses, validated when they are built.

Every option lcpress reads — the run config, a scheme's options, a cost
model's options — is a dataclass deriving from :class:`Options`. Building one
from a plain dict (parsed YAML) checks every key against the fields, every value
against the field's type hint, and reports problems with the key path::

    tasks[0].options.rank_multiple: expected int, got 'eight'

Subclasses add range checks in ``validate()``, raising :class:`ConfigError`
through :meth:`Options.fail` so the message carries the key path too. Each field
documents itself with ``help=...`` metadata, which ``lcpress plugins`` and the
docs print.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError

T = TypeVar("T", bound="Options")


def option(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a help line (shown by ``lcpress plugins`` and the docs)."""
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class Options:
    """Base of every options dataclass: strict ``from_dict`` plus ``validate``."""

    _path: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

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
    def describe(cls) -> list[tuple[str, str, Any, str]]:
        """(name, type, default, help) per field, for listings and docs."""
        hints = get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = _plain(f.default_factory())  # type: ignore[misc]
            else:
                default = "(required)"
            rows.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
        return rows


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
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{_join(path, key)}: unknown key{hint}; allowed keys: {', '.join(sorted(fields))}")
    hints = get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], _join(path, name))
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
        if value != value:
            raise ConfigError(f"{path}: NaN is not allowed")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if isinstance(value, tp):
        return value
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
