import math

import pytest

from lmforge.io.storage import InputError
from lmforge.train.midtrain_report import compare, markdown

MODELS = ["start", "a1", "a2", "soup", "control"]


def _documents(model: str, shift: float, ids=range(8)) -> dict:
    """A documents-perplexity result: each document's log-probability moved by `shift` nats
    per byte."""
    rows = [{"id": f"d{i}", "bytes": 100 + 10 * i, "logprob": -(1.2 + 0.1 * (i % 3) + shift)
             * (100 + 10 * i)} for i in ids]
    return {"model": model, "task": "docs", "kind": "perplexity",
            "primary_metric": "bits_per_byte", "instances": rows}


def test_paired_bootstrap_separates_a_consistent_gain_from_no_difference():
    shifts = {"start": 0.1, "a1": -0.02, "a2": -0.04, "soup": -0.03, "control": 0.0}
    rows = compare([_documents(m, s) for m, s in shifts.items()], *MODELS[:1], MODELS[1:3],
                   "soup", "control")
    (row,) = rows
    assert row["lower_is_better"] and row["instances"] == 8
    # Every document gains 0.03 nats per byte over the control: the mean gain exactly.
    assert row["anneal_mean_minus_control"] == pytest.approx(-0.03 / math.log(2))
    low, high = row["anneal_mean_minus_control_ci95"]
    assert low <= row["anneal_mean_minus_control"] <= high < 0
    assert row["soup_minus_anneal_mean"] == pytest.approx(0.0, abs=1e-12)
    table = markdown(rows, "start", ["a1", "a2"], "soup", "control")
    assert "better" in table and "no clear difference" in table


def test_models_scored_on_other_instances_or_missing_are_refused():
    results = [_documents(m, 0.0) for m in MODELS[:-1]]
    with pytest.raises(InputError, match="no result for control"):
        compare(results, "start", ["a1", "a2"], "soup", "control")
    results.append(_documents("control", 0.0, ids=range(1, 9)))
    with pytest.raises(InputError, match="different instances"):
        compare(results, "start", ["a1", "a2"], "soup", "control")
