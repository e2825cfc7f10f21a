"""Ranked classification against lm-evaluation-harness on OLMES' own request dumps, lm-eval
running in its peer venv (`make peers`)."""

import sys

import pytest

from conftest import ROOT, require_peer

sys.path.insert(0, str(ROOT / "benchmarks" / "evaluate"))

pytestmark = pytest.mark.slow  # runs a peer tool's pipeline


# The first questions of each dump: COPA's 50 of 100, OpenBookQA's 60 of 500 (the benchmark,
# make bench-eval, scores them all).
@pytest.mark.parametrize("task, limit", [("copa", 50), ("openbookqa", 60)])
def test_loglikelihoods_and_accuracies_match_lm_eval(task, limit, shared_data, tmp_path):
    import lm_eval_parity as parity

    require_peer("lm-eval")
    result = parity.compare(task, tmp_path, limit)
    assert result["documents"] == result["peer_documents"] == limit
    assert result["max_abs_loglikelihood_difference"] < 1e-4
    assert result["acc"][0] == result["acc"][1]
    assert result["acc_norm"][0] == result["acc_norm"][1]
