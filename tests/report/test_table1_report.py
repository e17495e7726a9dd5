"""The Table 1 report from a synthetic ``table1.json`` (no model is run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collabinfer.errors import ConfigError
from collabinfer.experiments.table1.schema import Table1Result
from collabinfer.report.table1 import Conditions, fmt, markdown, render_table1, write_table1

from .samples import table1_data, table1_latencies

PNGS = ("table1_latency_cdf.png", "table1_bytes_vs_p95.png")


def _result() -> Table1Result:
    return Table1Result.from_json(table1_data(), table1_latencies())


def test_markdown_has_every_row_the_conditions_and_the_plans() -> None:
    md = markdown(_result())
    assert "| LC | 89.70% | 14.0 | 21.0 | 0 | no | — | 0.00 | 0% | — | virtual-clock | 300 |" in md
    assert "| EC | 93.30% | 60.0 | 90.0 | 850 | yes | 1.00 | 1.25 |" in md
    assert "| collabinfer | 92.10% | 28.0 | 42.0 | 4,600 | no | — | 1.25 | 60% |" in md
    assert "RTT 50.0 ms (lte is OUR ASSUMPTION); fluctuating trace (seed 7" in md
    assert "The full model would take 136 ms on the device." in md
    assert "- **collabinfer**: plan of collabinfer; 3 inputs finished locally" in md
    assert "yes (privacy constraint)." in md


def test_fmt_formats_the_cli_columns() -> None:
    assert fmt("accuracy", 0.9331) == "93.31%"
    assert fmt("raw_input_leaves_device", True) == "yes"
    assert fmt("bytes_per_input", 12544.0) == "12,544"
    assert fmt("unknown", 3) == "3"


def test_write_then_render_from_the_files_alone(tmp_path: Path) -> None:
    paths = write_table1(_result(), tmp_path)
    names = [p.name for p in paths]  # what Table1Result.save writes, then the report
    assert names[:2] == ["table1.json", "table1_latencies.json"]
    assert names[-3:] == ["table1.md", *PNGS]
    assert (
        json.loads((tmp_path / "table1.json").read_text())
        == Table1Result.from_json(table1_data()).to_json_dict()
    )
    md = (tmp_path / "table1.md").read_text()
    for name in ("table1.md", *PNGS):
        (tmp_path / name).unlink()
    render_table1(tmp_path)
    assert (tmp_path / "table1.md").read_text() == md
    for name in PNGS:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_save_load_round_trips(tmp_path: Path) -> None:
    res = _result()
    res.save(tmp_path)
    assert Table1Result.load(tmp_path) == res


def test_a_constant_link_needs_no_trace_fields() -> None:
    data = table1_data()
    cond = data["conditions"]
    cond["fluctuating_trace"] = False
    for key in ("trace_seed", "trace_mean_mbps", "trace_volatility"):
        del cond[key]
    assert "constant bandwidth." in markdown(Table1Result.from_json(data))


def test_a_fluctuating_link_without_its_trace_is_refused() -> None:
    data = table1_data()
    del data["conditions"]["trace_mean_mbps"]
    with pytest.raises(ConfigError, match="conditions: a fluctuating trace needs"):
        markdown(Table1Result.from_json(data))


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("link_profile", "rtt_ms"), "fast", r"conditions\.link_profile\.rtt_ms must be a number"),
        (("wan_profile",), "wan", r"conditions\.wan_profile must be an object"),
        (("compute",), None, r"conditions\.compute must be a string, got null"),
        (("collabinfer_bottleneck",), {"used": 1}, r"conditions\.collabinfer_bottleneck\.used"),
    ],
)
def test_a_malformed_condition_the_report_reads_is_a_config_error(
    tmp_path: Path, path: tuple[str, ...], value: object, message: str
) -> None:
    data = table1_data()
    node = data["conditions"]
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    (tmp_path / "table1.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="^table1.json: " + message):
        render_table1(tmp_path)
    assert not (tmp_path / "table1.md").exists()
    with pytest.raises(ConfigError, match=message):
        write_table1(Table1Result.from_json(data), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_conditions_view_ignores_what_it_does_not_read() -> None:
    cond = Conditions.of(_result())
    assert cond.link_profile.name == "lte" and cond.trace_seed == 7
