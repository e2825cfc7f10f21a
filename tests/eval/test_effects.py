"""Effects across seeds: signs, Student-t intervals and verdicts from the runs' reports."""

import json

import pytest

from lmforge.eval import effects
from lmforge.io.storage import InputError


def test_interval_is_students_t_across_seeds():
    row = effects.summarize([1.0, 2.0, 3.0])
    # mean 2, sd 1, n 3: half-width t(0.975, 2) / sqrt(3) = 4.3027 / 1.7321
    assert row["mean"] == 2.0
    assert row["ci95"] == pytest.approx([2 - 2.48414, 2 + 2.48414], abs=1e-4)
    assert row["verdict"] == "null"  # the interval reaches below 0
    assert effects.summarize([2.0, 2.1, 1.9])["verdict"] == "holds"
    assert effects.summarize([-1.0, -1.1, -0.9])["verdict"] == "reversed"
    with pytest.raises(InputError, match="at least 2 runs"):
        effects.summarize([1.0])


def _write(run, name, obj):
    path = run / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _run(folder, seed):
    """Reports of one seeded run, shaped as the workflow writes them."""
    _write(folder, "train/growth.json", {"flops_ratio": None if seed == 3 else 0.7,
                                         "flops_ratio_at_staged_final": 1.2})
    _write(folder, "eval/midtrain.json", [
        {"task": "reference_bpb", "lower_is_better": True,
         "anneal_mean_minus_control": -0.2 - 0.01 * seed, "soup_minus_anneal_mean": 0.01},
        {"task": "heldout_ppl", "lower_is_better": True, "anneal_mean_minus_control": 3.0,
         "soup_minus_anneal_mean": -1.0}])
    rows = {"sft": {"accuracy": 0.2}, "dpo": {"accuracy": 0.3, "minus_sft": 0.1},
            "rlvr": {"accuracy": 0.25, "minus_sft": 0.05}}
    _write(folder, "eval/posttrain.json", {"baseline": "sft",
                                           "accuracy": {"arithmetic": rows, "ifeval": rows}})
    _write(folder, "eval/promptability.json", {
        setting: {"task_a": {"grow": {"accuracy": 0.5}, "promptable": {"minus_grow": 0.02}},
                  "task_b": {"grow": {"accuracy": 0.5}, "promptable": {"minus_grow": 0.04}}}
        for setting in ("zero_shot", "prompt_tuning")})
    _write(folder, "eval/vision.json", {"metrics": {
        kind: {metric: {"vlm": {"minus_text_only": 0.1 * seed}}}
        for kind, metric in (("pixmo_cap", "token_f1"), ("pixmo_points", "accuracy"),
                             ("pixmo_count", "accuracy"), ("vqa", "accuracy"))}})
    return folder


def test_effects_read_every_report_with_the_claimed_sign(tmp_path):
    runs = [_run(tmp_path / f"seed-{s}", s) for s in (1, 2, 3)]
    effects.write_effects(runs, tmp_path / "effects.md", tmp_path / "effects.json")
    rows = {r["effect"]: r for r in json.loads((tmp_path / "effects.json").read_text())["effects"]}
    growth = rows["growth: compute saved at equal held-out loss"]
    # Seed 3's staged run never reaches the baseline's loss: its saving is measured at its own.
    assert growth["values"] == pytest.approx([0.3, 0.3, -0.2])
    anneal = rows["anneal (midtrain mix) vs web control: reference bits per byte"]
    assert anneal["values"] == pytest.approx([0.21, 0.22, 0.23]) and anneal["verdict"] == "holds"
    soup = rows["soup vs mean ingredient: held-out perplexity"]
    assert soup["values"] == [1.0, 1.0, 1.0]  # lower perplexity: positive
    assert rows["promptability: zero-shot"]["mean"] == pytest.approx(0.03)
    assert rows["DPO vs SFT: constraints"]["mean"] == pytest.approx(0.1)
    assert rows["VLM vs text-only: pointing"]["values"] == pytest.approx([0.1, 0.2, 0.3])
    text = (tmp_path / "effects.md").read_text()
    assert "| growth: compute saved at equal held-out loss | +0.300, +0.300, -0.200 |" in text


def test_a_missing_report_names_the_run(tmp_path):
    runs = [_run(tmp_path / "seed-1", 1), tmp_path / "seed-2"]
    with pytest.raises(InputError, match="seed-2/train/growth.json is missing"):
        effects.collect(runs)
