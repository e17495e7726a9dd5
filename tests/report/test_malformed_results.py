"""Every malformed result file is a one-line ConfigError, never another exception.

For each experiment's sample file, every value in it (every key of every
object, every item of every list) is replaced by values of the wrong kind, or
deleted, and the file is read and rendered to markdown the way ``collabinfer
report`` does. Whatever happens must be either a clean render or a
:class:`ConfigError` whose single line starts with the file's name; for the
rate-accuracy and dynamic schemas it must also name the field (or the object
holding it). Plus the file-level cases: not JSON, not UTF-8, not an object.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from collabinfer.errors import ConfigError
from collabinfer.experiments.dynamic_schema import DynamicResult
from collabinfer.experiments.rate_accuracy_schema import RateAccuracyResult
from collabinfer.experiments.table1.schema import Table1Result
from collabinfer.report import dynamic, rate_accuracy, render_report, table1

from .samples import dynamic_data, rate_accuracy_data, table1_data, table1_latencies

Path_ = tuple[str | int, ...]
DELETE = object()
WRONG: tuple[object, ...] = (
    DELETE,
    None,
    "x",
    True,
    -1,
    1.5,
    math.nan,
    math.inf,
    [],
    [1, "a"],
    {},
    {"typo": 1},
)


def _render_dynamic(data: object) -> str:
    return dynamic.markdown(DynamicResult.from_json(data))


def _render_rate(data: object) -> str:
    return rate_accuracy.markdown(RateAccuracyResult.from_json(data))


def _render_table1(data: object) -> str:
    return table1.markdown(Table1Result.from_json(data, table1_latencies()))


# file name, sample, render, whether the message must name the field (our schemas do)
EXPERIMENTS: dict[str, tuple[str, Callable[[], dict[str, Any]], Callable[[object], str], bool]] = {
    "dynamic": ("dynamic.json", dynamic_data, _render_dynamic, True),
    "rate_accuracy": ("rate_accuracy.json", rate_accuracy_data, _render_rate, True),
    "table1": ("table1.json", table1_data, _render_table1, False),
}


def _paths(node: object, prefix: Path_ = ()) -> Iterator[Path_]:
    items: Any = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in items:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


def _where(file: str, path: Path_) -> str:
    out = file
    for i, step in enumerate(path):
        out += f"[{step}]" if isinstance(step, int) else (f": {step}" if i == 0 else f".{step}")
    return out


def _mutated(data: dict[str, Any], path: Path_, value: object) -> dict[str, Any]:
    data = copy.deepcopy(data)
    node: Any = data
    for step in path[:-1]:
        node = node[step]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = copy.deepcopy(value)
    return data


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_wrong_value_anywhere_is_rendered_or_a_one_line_config_error(name: str) -> None:
    file, sample, render, names_field = EXPERIMENTS[name]
    data = sample()
    render(data)  # the sample itself is fine
    tried = refused = 0
    for path in _paths(data):
        for value in WRONG:
            tried += 1
            try:
                render(_mutated(data, path, value))
            except ConfigError as exc:
                refused += 1
                message = str(exc)
                assert "\n" not in message, (path, value, message)
                assert message.startswith(file), (path, value, message)
                if names_field:
                    ancestors = [_where(file, path[:n]) for n in range(1, len(path) + 1)]
                    assert any(a in message for a in ancestors), (path, value, message)
    assert tried > 200 and refused > tried // 2  # most wrong values are caught, none crash


@pytest.mark.parametrize("name", list(EXPERIMENTS))
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read"),
        ("", "cannot read"),
        (b"\xff\xfe{}", "cannot read"),
        ("[]", "must be an object"),
        ('"results"', "must be an object"),
        ("null", "must be an object"),
        ("{}", "is missing|with keys"),
    ],
)
def test_a_file_that_is_no_result_at_all(
    tmp_path: Path, name: str, content: str | bytes, message: str
) -> None:
    file = EXPERIMENTS[name][0]
    target = tmp_path / file
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content)
    with pytest.raises(ConfigError, match=message) as err:
        render_report(tmp_path)
    assert "\n" not in str(err.value)
    assert not list(tmp_path.glob("*.md")) and not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("name", ["dynamic", "rate_accuracy"])
def test_a_misspelt_field_is_an_error_not_ignored(name: str) -> None:
    file, sample, render, _ = EXPERIMENTS[name]
    data = sample()
    point = data["points"][0]
    point["acuracy"] = point["accuracy"]
    with pytest.raises(ConfigError, match=r"points\[0\] has unknown fields \['acuracy'\]"):
        render(data)
    data = sample()
    data["resluts"] = 1
    with pytest.raises(ConfigError, match=f"^{file} has unknown fields"):
        render(data)


def test_wrong_nesting_names_the_level(tmp_path: Path) -> None:
    data = dynamic_data()
    data["points"] = {"static": data["points"][0]}  # an object where a list belongs
    with pytest.raises(ConfigError, match=r"^dynamic.json: points must be a list, got an object"):
        _render_dynamic(data)
    data = dynamic_data()
    data["exits"][0]["reliability_before"] = data["exits"][0]["reliability_before"][0]
    with pytest.raises(ConfigError, match=r"exits\[0\]\.reliability_before must be a list"):
        _render_dynamic(data)
    data = rate_accuracy_data()
    data["conditions"]["encoder"] = [data["conditions"]["encoder"]]
    with pytest.raises(ConfigError, match=r"conditions\.encoder must be an object, got a list"):
        _render_rate(data)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (("points", 0, "accuracy"), r"points\[0\]\.accuracy must be a finite number, got nan"),
        (("points", 1, "exit_fractions", 0), r"exit_fractions\[0\] must be a finite number"),
        (("exits", 0, "reliability_after", 1, "confidence"), r"reliability_after\[1\]"),
        (("conditions", "seconds"), r"conditions\.seconds must be a finite number"),
    ],
)
def test_nan_where_a_number_belongs(path: Path_, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _render_dynamic(_mutated(dynamic_data(), path, math.nan))


def test_nan_in_a_rate_accuracy_file_on_disk(tmp_path: Path) -> None:
    data = rate_accuracy_data()
    data["reference_accuracy"] = math.nan
    (tmp_path / "rate_accuracy.json").write_text(json.dumps(data))  # Python writes NaN
    assert "NaN" in (tmp_path / "rate_accuracy.json").read_text()
    with pytest.raises(ConfigError, match="reference_accuracy must be a finite number"):
        render_report(tmp_path)


def test_edge_values_the_schemas_accept_still_plot(tmp_path: Path) -> None:
    """Zeros, equal values and empty lists pass the schemas; the plots must cope
    (a log axis has no 0, a CDF of nothing is no line)."""
    t1 = table1_data()
    t1["rows"][1]["bytes_per_input"] = 0.0
    lat = table1_latencies()
    lat["LC"] = [0.0, 0.0, 1e-3]
    lat["EC"] = []
    lat["CC"] = [5.0] * 10
    (tmp_path / "t1").mkdir()
    (tmp_path / "t1" / "table1.json").write_text(json.dumps(t1))
    (tmp_path / "t1" / "table1_latencies.json").write_text(json.dumps(lat))
    ra = rate_accuracy_data()
    ra["points"] = [ra["points"][0] | {"bytes_per_input": 0.0, "accuracy": 0.0}]
    (tmp_path / "ra").mkdir()
    (tmp_path / "ra" / "rate_accuracy.json").write_text(json.dumps(ra))
    dy = dynamic_data()
    dy["points"][1]["exit_fractions"] = [0.0, 0.0, 0.0]
    dy["points"][0]["latency_p50_ms"] = dy["points"][0]["latency_p95_ms"] = 0.0
    (tmp_path / "dy").mkdir()
    (tmp_path / "dy" / "dynamic.json").write_text(json.dumps(dy))
    for folder in ("t1", "ra", "dy"):
        for p in render_report(tmp_path / folder):
            assert p.is_file()
