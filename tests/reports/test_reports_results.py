"""reports.results: the typed rows are the schema, and a results file as the sweep writes it reads
and writes back unchanged (tests/reports/data/results-sweep-1.json: a 1- and 2-device CPU sweep of
the mlp with two mixed-precision variants, written by the sweep before the rows were typed)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from reports import markdown
from reports.codec import to_json
from reports.figures import report_figures
from reports.results import SCHEMA, Results, TrainRow, load, validate

SWEEP_FILE = Path(__file__).parent / "data" / "results-sweep-1.json"


def _extras(value: object) -> list[str]:
    """Every key a file holds that no dataclass names, as 'Class.key'."""
    if isinstance(value, list):
        return [e for v in value for e in _extras(v)]
    if not dataclasses.is_dataclass(value):
        return []
    found = [f"{type(value).__name__}.{k}" for k in getattr(value, "extra", {})]
    for f in dataclasses.fields(value):
        if f.name != "extra":
            found += _extras(getattr(value, f.name))
    return found


def test_a_sweep_s_file_reads_and_writes_back_unchanged():
    raw = json.loads(SWEEP_FILE.read_text())
    results = load(SWEEP_FILE)
    assert results.to_json() == raw
    assert json.dumps(results.to_json(), indent=2) == json.dumps(raw, indent=2)  # the key order too


def test_every_key_the_sweep_writes_is_a_field_of_the_schema():
    """The dataclasses are the schema's only description: nothing the sweep wrote falls outside them."""
    results = load(SWEEP_FILE)
    assert _extras(results) == []
    assert results.train and results.input and results.allreduce
    assert {r.variant["mixed_precision"] for r in results.train if r.variant} == {False, True}


def test_a_file_from_before_the_variant_axes_loads_as_one_default_variant():
    raw = json.loads(SWEEP_FILE.read_text())
    for key in ("variants", "image_size", "data", "created_at"):
        raw.pop(key)
    raw["train"] = [{k: v for k, v in row.items() if k != "variant"} for row in raw["train"][:2]]
    raw["allreduce"] = [{k: v for k, v in row.items() if k != "variant"} for row in raw["allreduce"]]
    results = validate(raw)
    assert results.variants is None and results.image_size is None
    figures = report_figures(results)
    assert figures.variants is None and len(figures.train) == 2
    assert "## Variants" not in markdown.render(results, figures, [])


def test_keys_this_code_does_not_know_are_kept():
    raw = json.loads(SWEEP_FILE.read_text())
    raw["written_by"] = "a newer sweep"
    raw["train"][0]["energy_joules"] = 12.5
    results = validate(raw)
    assert results.extra == {"written_by": "a newer sweep"}
    assert results.train[0].extra == {"energy_joules": 12.5}
    assert results.to_json() == raw


def test_rows_are_typed_and_written_by_their_fields():
    row = TrainRow(gpus=2, round_seconds=[0.5], batch_per_gpu=8, global_batch=16, steps=4)
    assert row.rates() == [128.0]
    written = to_json(row)
    assert "variant" not in written and written["round_seconds"] == [0.5]  # no variant: none written
    assert isinstance(validate({"schema": SCHEMA, "train": [written]}), Results)
