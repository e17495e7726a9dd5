"""The one reader of result files: types, paths in messages, codecs, omitted nulls."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from collabinfer.errors import ConfigError
from collabinfer.experiments.records import from_json, json_codec, read_json, to_json, write_json


@dataclass(frozen=True)
class Leaf:
    name: str
    count: int
    share: float
    flag: bool = False

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ConfigError("count must be >= 0")


def _read_pair(value: object, where: str) -> tuple[int, int]:
    if not (isinstance(value, str) and value.count(":") == 1):
        raise ConfigError(f"{where} must look like 'a:b'")
    a, b = value.split(":")
    return int(a), int(b)


@dataclass(frozen=True)
class Tree:
    json_omit_none: ClassVar[bool] = True

    leaves: tuple[Leaf, ...]
    best: Leaf | None = None
    scores: tuple[float | None, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    pair: tuple[int, int] | None = field(
        default=None, metadata=json_codec(_read_pair, lambda p: f"{p[0]}:{p[1]}")
    )


LEAF = {"name": "a", "count": 2, "share": 0.5}


def test_a_tree_reads_and_writes_back() -> None:
    data = {"leaves": [LEAF, LEAF | {"flag": True}], "scores": [1, None], "pair": "3:4"}
    tree = from_json(Tree, data, "t.json")
    assert tree.leaves[1].flag and tree.scores == (1.0, None) and tree.pair == (3, 4)
    assert isinstance(tree.scores[0], float)  # an int is a fine float
    out = to_json(tree)
    assert "best" not in out  # json_omit_none: None fields are left out, not null
    assert out["leaves"][0] == LEAF | {"flag": False}  # defaults are written
    assert from_json(Tree, out, "t.json") == tree


def test_null_is_kept_without_omit_none() -> None:
    @dataclass(frozen=True)
    class Holder:
        leaf: Leaf | None = None

    assert to_json(Holder()) == {"leaf": None}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], r"^t\.json must be an object, got a list$"),
        ({"leaves": [LEAF], "leafs": 1}, r"^t\.json has unknown fields \['leafs'\]"),
        ({}, r"^t\.json: leaves is missing$"),
        ({"leaves": LEAF}, r"^t\.json: leaves must be a list, got an object$"),
        ({"leaves": [LEAF | {"count": True}]}, r"leaves\[0\]\.count must be an integer, got True"),
        ({"leaves": [LEAF | {"count": 2.0}]}, r"leaves\[0\]\.count must be an integer, got 2\.0"),
        ({"leaves": [LEAF | {"share": "1"}]}, r"leaves\[0\]\.share must be a number, got '1'"),
        ({"leaves": [LEAF | {"share": math.nan}]}, r"share must be a finite number, got nan"),
        ({"leaves": [LEAF | {"share": math.inf}]}, r"share must be a finite number, got inf"),
        ({"leaves": [LEAF | {"name": 3}]}, r"leaves\[0\]\.name must be a string, got 3"),
        ({"leaves": [LEAF | {"flag": 1}]}, r"leaves\[0\]\.flag must be true or false, got 1"),
        ({"leaves": [LEAF | {"share": None}]}, r"share must be a number, got null"),
        ({"leaves": [LEAF | {"count": -1}]}, r"^t\.json: leaves\[0\]: count must be >= 0$"),
        ({"leaves": [], "best": [LEAF]}, r"^t\.json: best must be an object, got a list$"),
        ({"leaves": [], "scores": ["x"]}, r"^t\.json: scores\[0\] must be a number"),
        ({"leaves": [], "extra": []}, r"^t\.json: extra must be an object"),
        ({"leaves": [], "pair": "34"}, r"^t\.json: pair must look like 'a:b'$"),
    ],
)
def test_every_mistake_is_a_config_error_naming_the_field(data: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_json(Tree, data, "t.json")


def test_strict_false_ignores_unknown_fields_all_the_way_down() -> None:
    data = {"leaves": [LEAF | {"colour": "red"}], "other": 1}
    assert from_json(Tree, data, "t.json", strict=False).leaves[0].name == "a"


def test_read_and_write_json_files(tmp_path: Path) -> None:
    path = write_json(tmp_path / "sub" / "x.json", {"a": [1, 2]})
    assert read_json(path, "x results") == {"a": [1, 2]}
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    with pytest.raises(ConfigError, match="cannot read x results in"):
        read_json(tmp_path / "missing.json", "x results")
    path.write_bytes(b"\xff")
    with pytest.raises(ConfigError, match="cannot read x results"):
        read_json(path, "x results")
    path.write_text("[" * 100_000)  # nested too deep for the parser
    with pytest.raises(ConfigError, match="cannot read x results"):
        read_json(path, "x results")


def test_a_long_wrong_value_is_cut_short_in_the_message() -> None:
    with pytest.raises(ConfigError) as err:
        from_json(Leaf, LEAF | {"share": "y" * 500}, "t.json")
    assert len(str(err.value)) < 120 and str(err.value).endswith("...")
