"""Typed result records to and from JSON, one field at a time.

An experiment's result is a tree of frozen dataclasses (habit 8); its file is
that tree as JSON. :func:`from_json` reads a file's parsed JSON back into the
tree, driven by the dataclass fields and their annotations, so every schema
checks the same things the same way and a reader never indexes a raw dict:

* an object's keys must be fields of its class (a typo is an error), and a
  field without a default must be there;
* ``str``, ``bool``, ``int`` and ``float`` are what they say (``True`` is not
  an ``int``; an ``int`` is a fine ``float``); a ``float`` must be finite;
* ``X | None`` accepts ``null``; ``tuple[X, ...]`` a list; ``dict[str, X]`` an
  object; a dataclass an object, read recursively;
* a field whose metadata holds a :func:`json_codec` is read and written by it
  (e.g. an :class:`~collabinfer.model.dynamic.ExitRule`, which has its own layout).

Whatever does not fit is a :class:`~collabinfer.errors.ConfigError` whose one
line names the file and the path to the field (``dynamic.json: points[3].accuracy
must be a number, got 'high'``). A class's ``__post_init__`` may raise
``ConfigError`` for what types cannot say (ranges, lengths that must agree); the
message gets the same path prefix.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class P:
    ...     name: str
    ...     score: float = 0.0
    >>> from_json(P, {"name": "a", "score": 1}, "p.json")
    P(name='a', score=1.0)
    >>> from_json(P, {"name": "a", "scroe": 1}, "p.json")
    Traceback (most recent call last):
    ...
    collabinfer.errors.ConfigError: p.json has unknown fields ['scroe']; expected ['name', 'score']
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar, Union

from collabinfer.errors import ConfigError

__all__ = ["ResultFile", "from_json", "json_codec", "read_json", "to_json", "write_json"]

T = TypeVar("T")
Reader = Callable[[object, str], Any]
Writer = Callable[[Any], Any]
_CODEC = "collabinfer.json_codec"


def json_codec(reader: Reader, writer: Writer) -> dict[str, object]:
    """Field metadata: read the field with ``reader(value, where)``, write it with
    ``writer(value)`` (``null`` is handled before either is called)."""
    return {_CODEC: (reader, writer)}


def _at(where: str, name: object) -> str:
    """The path of field ``name`` below ``where``: ``dynamic.json: points``, then
    ``dynamic.json: points[0].accuracy``."""
    return f"{where}.{name}" if ":" in where else f"{where}: {name}"


def _kind(value: object) -> str:
    """``value`` in a message: its JSON kind, or its repr, kept to one short line."""
    kind = {dict: "an object", list: "a list", type(None): "null"}.get(type(value))
    text = kind or repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _read(tp: Any, value: object, where: str, strict: bool) -> Any:
    """``value`` as type ``tp``, or a ConfigError naming ``where``."""
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]  # schemas use only X | None
        return _read(inner, value, where, strict)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {_kind(value)}")
        return tuple(_read(args[0], v, f"{where}[{i}]", strict) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be an object, got {_kind(value)}")
        return {str(k): _read(args[1], v, _at(where, k), strict) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_json(tp, value, where, strict=strict)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {_kind(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {_kind(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {_kind(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {_kind(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    raise TypeError(f"records cannot read the annotation {tp!r} ({where})")  # a schema bug


def from_json(cls: type[T], data: object, where: str, *, strict: bool = True) -> T:
    """An instance of the dataclass ``cls`` from parsed JSON; see the module docstring.

    ``strict=False`` ignores keys that are not fields, here and below: for a
    reader's view of the part of another schema that it uses (the Table 1
    report reads a few of the free-form conditions that way).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be an object, got {_kind(data)}")
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    names = [f.name for f in fields]
    unknown = sorted(set(data) - set(names))
    if unknown and strict:
        raise ConfigError(f"{where} has unknown fields {unknown}; expected {names}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields:
        at = _at(where, f.name)
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{at} is missing")
            continue
        value = data[f.name]
        codec = f.metadata.get(_CODEC)
        if codec is not None and value is not None:
            kwargs[f.name] = codec[0](value, at)
        else:
            kwargs[f.name] = _read(hints[f.name], value, at, strict)
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # __post_init__: what the types cannot check
        raise ConfigError(f"{where}: {exc.message}") from None


def to_json(obj: object) -> Any:
    """The JSON value of a record tree: dataclasses become objects in field order,
    tuples lists. A class with ``json_omit_none = True`` leaves out its ``None``
    fields instead of writing ``null`` (its files never had those keys)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        omit = getattr(type(obj), "json_omit_none", False)
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None:
                if not omit:
                    out[f.name] = None
                continue
            codec = f.metadata.get(_CODEC)
            out[f.name] = codec[1](value) if codec is not None else to_json(value)
        return out
    if isinstance(obj, tuple | list):
        return [to_json(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_json(v) for k, v in obj.items()}
    return obj


def read_json(path: Path, what: str) -> object:
    """Parsed JSON of ``path``; a missing or unparsable file is a ConfigError."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8 or JSON
        raise ConfigError(f"cannot read {what} in {path.parent}: {exc}") from None


def write_json(path: Path, data: object) -> Path:
    """``data`` as indented JSON at ``path`` (its folder made if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


class ResultFile:
    """Save and load for a result record kept in one JSON file in the output folder.

    A subclass (a frozen dataclass) names its ``FILE`` and, for error
    messages, ``WHAT``; it may override :meth:`from_json` for what its layout
    adds (a derived block to drop). ``save`` reads back what it is about to
    write first, so a file that was written can always be loaded.
    """

    FILE: ClassVar[str]
    WHAT: ClassVar[str]

    def to_json_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = to_json(self)
        return data

    @classmethod
    def from_json(cls, data: object) -> Self:
        """The result from parsed JSON; anything malformed is a :class:`ConfigError`."""
        return from_json(cls, data, cls.FILE)

    def save(self, out: Path) -> list[Path]:
        data = self.to_json_dict()
        type(self).from_json(data)
        return [write_json(out / self.FILE, data)]

    @classmethod
    def load(cls, out: Path) -> Self:
        return cls.from_json(read_json(out / cls.FILE, cls.WHAT))
