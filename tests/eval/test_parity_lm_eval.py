"""Ranked classification against lm-evaluation-harness on OLMES' own request dumps, lm-eval
running in its peer venv (`make peers`)."""

import sys

import pytest

from conftest import ROOT, require_peer

sys.path.insert(0, str(ROOT / "benchmarks" / "evaluate"))

pytestmark = pytest.mark.slow  # runs a peer tool's pipeline


# The first 50 questions of each dump, COPA's of 100 and OpenBookQA's of 500 (the benchmark,
# make bench-eval, scores them all); lm-eval scores both in one process, as its users run it.
def test_loglikelihoods_and_accuracies_match_lm_eval(shared_data, tmp_path):
    import lm_eval_parity as parity

    require_peer("lm-eval")
    results = parity.compare(["copa", "openbookqa"], tmp_path, limit=50)
    assert [r["task"] for r in results] == ["copa", "openbookqa"]
    for result in results:
        assert result["documents"] == result["peer_documents"] == 50, result["task"]
        assert result["max_abs_loglikelihood_difference"] < 1e-4, result["task"]
        assert result["acc"][0] == result["acc"][1], result["task"]
        assert result["acc_norm"][0] == result["acc_norm"][1], result["task"]
