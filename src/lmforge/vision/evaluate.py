"""Evaluating the vision-language model on held-out scenes: caption quality (token F1 and
CIDEr-D), VQA accuracy, pointing accuracy (the first generated point inside a target) and
counting accuracy, against a text-only model trained on the same mixture without images and a
random baseline (a uniform random point: its expected accuracy is exactly the targets' share
of the image; counts (uniform over 0..min(3, max_objects) in the scenes) and answers: a
uniform guess among the possible ones), with paired 95% bootstrap intervals.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from lmforge.data.tokenize import EOS, load_tokenizer
from lmforge.io.storage import InputError, write_json, write_text
from lmforge.posttrain.report import bootstrap
from lmforge.runner import CFG, OUT_JSON, OUT_MD, TOKENIZER, arg, command
from lmforge.vision import pixmo
from lmforge.vision.molmo import Molmo, encode_example, multi_crop

MASK_SIZE = 200  # pixels per side when scoring points against the targets' shapes
MAX_NEW_TOKENS = {"pixmo_cap": 72, "pixmo_points": 64, "pixmo_count": 4, "vqa": 4}
VQA_CHOICES = {"color": len(pixmo.COLORS), "shape": len(pixmo.SHAPES), "presence": 2}


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer, prompts: list[str], images: list | None,
             eos: str, max_new_tokens: int, batch_size: int = 64) -> list[str]:
    """Greedy answers; `model` is a Molmo (with `images`, one array per prompt) or a plain
    decoder (text only). Prompts of one token length decode together (no padding needed)."""
    eos_id = tokenizer.token_to_id(eos)
    decoder = model.decoder if isinstance(model, Molmo) else model
    was_training = model.training
    model.eval()
    contexts = [encode_example(tokenizer, p, None, eos)[0] for p in prompts]
    by_length = defaultdict(list)
    for index, context in enumerate(contexts):
        by_length[len(context)].append(index)
    answers: list[str] = [""] * len(prompts)
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            prefix = None
            if isinstance(model, Molmo):
                crops = np.stack([multi_crop(images[i], model.vision_cfg) for i in chunk])
                prefix = model.image_embeddings(torch.from_numpy(crops))
            generated = decoder.generate([contexts[i] for i in chunk], max_new_tokens, eos_id,
                                         prefix=prefix)
            for (tokens, ended), index in zip(generated, chunk):
                answers[index] = tokenizer.decode(tokens[:-1] if ended else tokens)
    model.train(was_training)
    return answers


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def token_f1(hypothesis: str, reference: str) -> float:
    """SQuAD-style F1 of the bags of lower-cased words."""
    hyp, ref = Counter(words(hypothesis)), Counter(words(reference))
    overlap = sum((hyp & ref).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(hyp.values()), overlap / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def cider(hypotheses: list[str], references: list[str]) -> np.ndarray:
    """Per-item CIDEr-D (pycocoevalcap; IDF over this set's references), on lower-cased words
    (its Java PTB tokenizer is not needed for generated English)."""
    from pycocoevalcap.cider.cider import Cider

    gts = {i: [" ".join(words(r))] for i, r in enumerate(references)}
    res = {i: [" ".join(words(h)) or "empty"] for i, h in enumerate(hypotheses)}
    return np.asarray(Cider().compute_score(gts, res)[1], dtype=float)


def _targets(record: dict) -> list[dict]:
    if "objects" not in record:
        raise InputError(f"{record.get('image')}: pointing needs the scene's objects to score "
                         "a point against the target's shape")
    label = record["label"]
    return [o for o in record["objects"] if f"{o['color']} {o['shape']}" == label]


def target_mask(record: dict) -> np.ndarray:
    mask = np.zeros((MASK_SIZE, MASK_SIZE), dtype=bool)
    for obj in _targets(record):
        mask |= pixmo.object_mask(obj, MASK_SIZE)
    return mask


def point_hits(answer: str, record: dict) -> float:
    """1 if the first point of the answer lies on a target, else 0 (no point: 0)."""
    points = pixmo.parse_points(answer)
    if not points:
        return 0.0
    x, y = (min(int(v * MASK_SIZE / 100), MASK_SIZE - 1) for v in points[0])
    return float(target_mask(record)[y, x])


def vqa_kind(question: str) -> str:
    return ("color" if question.startswith("What color") else
            "shape" if question.startswith("What shape") else "presence")


def scores(kind: str, answers: list[str], records: list[dict]) -> dict[str, np.ndarray]:
    """Per-item scores of one kind's answers, by metric."""
    if kind == "pixmo_cap":
        references = [r["caption"] for r in records]
        return {"token_f1": np.array([token_f1(a, r) for a, r in zip(answers, references)]),
                "cider": cider(answers, references)}
    if kind == "pixmo_points":
        return {"accuracy": np.array([point_hits(a, r) for a, r in zip(answers, records)])}
    if kind == "pixmo_count":
        return {"accuracy": np.array([float(pixmo.parse_count(a) == r["count"])
                                      for a, r in zip(answers, records)])}
    return {"accuracy": np.array([float(" ".join(words(a)) == r["answer"])
                                  for a, r in zip(answers, records)])}


def random_scores(kind: str, records: list[dict], max_objects: int) -> np.ndarray | None:
    """The expected per-item score of a random answer (None for captions)."""
    if kind == "pixmo_points":
        return np.array([target_mask(r).mean() for r in records])
    if kind == "pixmo_count":
        return np.full(len(records), 1.0 / (min(3, max_objects) + 1))
    if kind == "vqa":
        return np.array([1.0 / VQA_CHOICES[vqa_kind(r["question"])] for r in records])
    return None


METRICS = {"pixmo_cap": ("token_f1", "cider"), "pixmo_points": ("accuracy",),
           "pixmo_count": ("accuracy",), "vqa": ("accuracy",)}


def evaluate(vlm: Molmo, text_only: torch.nn.Module, tokenizer, eval_sets: dict[str, list],
             eos: str, max_objects: int) -> dict:
    """Every kind's metrics for the VLM, the text-only model and the random baseline, each
    with a bootstrap interval and the VLM's paired difference from each baseline; plus the
    answers themselves (for the report's pictures)."""
    report: dict = {"metrics": {}, "answers": {}}
    for kind, records in eval_sets.items():
        prompts = [pixmo.example(kind, r)[0] for r in records]
        images = [pixmo.load_image(r["image_file"]) for r in records]
        answers = {"vlm": generate(vlm, tokenizer, prompts, images, eos, MAX_NEW_TOKENS[kind]),
                   "text_only": generate(text_only, tokenizer, prompts, None, eos,
                                         MAX_NEW_TOKENS[kind])}
        report["answers"][kind] = answers
        per_model = {name: scores(kind, out, records) for name, out in answers.items()}
        chance = random_scores(kind, records, max_objects)
        report["metrics"][kind] = {}
        for metric in METRICS[kind]:
            values = {"text_only": per_model["text_only"][metric],
                      "vlm": per_model["vlm"][metric]}
            row = bootstrap(values, "text_only")
            if chance is not None:
                versus = bootstrap({"random": chance, "vlm": values["vlm"]}, "random")
                row["random"] = versus["random"]
                row["vlm"]["minus_random"] = versus["vlm"]["minus_random"]
                row["vlm"]["difference_interval_random"] = versus["vlm"]["difference_interval"]
            report["metrics"][kind][metric] = row
    return report


NAMES = {"pixmo_cap": "captions", "pixmo_points": "pointing", "pixmo_count": "counting",
         "vqa": "VQA"}


def _cell(row: dict | None, scale: float) -> str:
    if row is None:
        return "–"
    low, high = row["interval"]
    return f"{scale * row['accuracy']:.1f} [{scale * low:.1f}, {scale * high:.1f}]"


def _difference(row: dict, baseline: str, scale: float) -> str:
    if f"minus_{baseline}" not in row:
        return "–"
    interval = row["difference_interval" if baseline == "text_only"
                   else "difference_interval_random"]
    return (f"{scale * row[f'minus_{baseline}']:+.1f} "
            f"[{scale * interval[0]:.1f}, {scale * interval[1]:.1f}]")


def markdown(report: dict) -> str:
    lines = ["# Vision-language model (Molmo at toy scale) on held-out scenes", "",
             "Mean [95% bootstrap]; accuracies in %, caption token F1 × 100, CIDEr-D as is. "
             "text-only: the same LM fine-tuned on the same mixture without images; random: a "
             "uniform random point / count / answer (its expectation).", "",
             "| task | metric | n | random | text-only | VLM | VLM − text-only | VLM − random |",
             "|---|---|---|---|---|---|---|---|"]
    for kind, metrics in report["metrics"].items():
        for metric, row in metrics.items():
            scale = 1.0 if metric == "cider" else 100.0
            vlm = row["vlm"]
            lines.append(f"| {NAMES[kind]} | {metric} | {vlm['n']} | "
                         f"{_cell(row.get('random'), scale)} | "
                         f"{_cell(row['text_only'], scale)} | {_cell(vlm, scale)} | "
                         f"{_difference(vlm, 'text_only', scale)} | "
                         f"{_difference(vlm, 'random', scale)} |")
    return "\n".join(lines) + "\n"


def flat_metrics(report: dict) -> dict[str, float]:
    """`<kind>.<metric>.<model>` → mean, for MLflow."""
    return {f"{kind}.{metric}.{model}": row["accuracy"]
            for kind, metrics in report["metrics"].items()
            for metric, rows in metrics.items()
            for model, row in rows.items()}


def plot_points(records: list[dict], answers: dict[str, list[str]], out_path, n: int = 8):
    """Held-out scenes with the VLM's and the text-only model's first points over the
    target's name, for the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lmforge.io.storage import save_figure

    n = min(n, len(records))
    fig, axes = plt.subplots(1, n, figsize=(2 * n, 2.4), squeeze=False)
    for ax, index in zip(axes[0], range(n)):
        record = records[index]
        image = pixmo.load_image(record["image_file"])
        ax.imshow(image)
        for name, color in (("vlm", "lime"), ("text_only", "magenta")):
            for x, y in pixmo.parse_points(answers[name][index])[:1]:
                ax.scatter([x * image.shape[1] / 100], [y * image.shape[0] / 100], s=60,
                           c=color, marker="x", linewidths=2.5)
        ax.set_title(record["label"], fontsize=9)
        ax.axis("off")
    fig.suptitle("Pointing on held-out scenes: the VLM's first point (green ×) and the "
                 "text-only model's (magenta ×)")
    save_figure(fig, out_path)


@command("vlm-report", arg("--vlm"), arg("--text-only"), arg("--scenes"), TOKENIZER, CFG,
         OUT_MD, OUT_JSON, arg("--out-png"), job="vlm_report",
         inputs=("vlm", "text_only", "scenes", "tokenizer"),
         outputs=("out_md", "out_json", "out_png"), artifacts=("out_md", "out_png"))
def vlm_report_command(args, job) -> dict:
    """Captions, VQA, pointing and counting on held-out scenes: VLM vs text-only vs random."""
    from lmforge.model.checkpoint import load_model
    from lmforge.vision.molmo import load_vlm, with_context

    vlm = load_vlm(args.vlm)
    text_only = with_context(load_model(args.text_only), vlm.cfg.max_seq_len)
    eval_sets = {kind: pixmo.read_records(Path(args.scenes) / f"{kind}.eval.jsonl.gz", kind)
                 for kind in pixmo.KINDS}
    report = evaluate(vlm, text_only, load_tokenizer(args.tokenizer), eval_sets, EOS,
                      args.cfg["max_objects"])
    write_json(args.out_json, report)
    write_text(args.out_md, markdown(report))
    plot_points(eval_sets["pixmo_points"], report["answers"]["pixmo_points"], args.out_png)
    return flat_metrics(report)
