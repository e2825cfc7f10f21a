"""A quality classifier the workflow trains itself (Dolma 1.7's and DCLM's recipe).

Positives are reference text, negatives random documents of the raw crawl; the model is
fastText's: a linear classifier over hashed word uni- and bigrams, here scikit-learn's
`HashingVectorizer` + logistic regression (SGD). Its weights are stored as plain arrays (npz),
never pickled, and scored documents get a `quality__score` span with P(reference).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.data import sources
from lmforge.data.attributes import AttributeStep, Spans, run_step
from lmforge.io.storage import (
    atomic_path,
    read_jsonl,
    stable_fraction,
    write_json,
)
from lmforge.runner import CFG, DOCS, OUT, SEED, arg, command
from lmforge.settings import Section


@dataclass(frozen=True)
class QualityConfig(Section):
    SECTION = "curate.quality"

    reference: str  # the reference corpus the classifier learns to recognise
    n_features: int
    l2: float
    epochs: int


def _vectorizer(n_features: int):
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=n_features, ngram_range=(1, 2), alternate_sign=False,
                             norm="l2", lowercase=True)


def reference_documents(reference: str, words_per_doc: int = 150) -> list[str]:
    """`pydoc`: Python's language reference cut into page-sized chunks (without the topics
    held out for evaluation); else a JSONL path."""
    if reference != "pydoc":
        return [doc["text"] for doc in read_jsonl(reference)]
    docs, chunk = [], []
    _, crawl_topics = sources.split_task_and_crawl_topics()
    by_topic = sources.topic_paragraphs()
    for topic in crawl_topics:
        for paragraph in by_topic[topic]:
            chunk.append(paragraph)
            if sum(len(p.split()) for p in chunk) >= words_per_doc:
                docs.append("\n\n".join(chunk))
                chunk = []
    return docs


def train_classifier(docs_paths: list, out_path, cfg: QualityConfig | Mapping, seed: int) -> dict:
    cfg = QualityConfig.of(cfg)
    from sklearn.linear_model import SGDClassifier

    positives = reference_documents(cfg.reference)
    crawl = [doc["text"] for path in docs_paths for doc in read_jsonl(path)]
    if not positives or not crawl:
        raise ValueError("the quality classifier needs reference text and crawl documents")
    rng = random.Random(seed)
    negatives = rng.sample(crawl, min(len(crawl), len(positives)))
    texts = positives + negatives
    labels = np.array([1] * len(positives) + [0] * len(negatives))
    held_out = np.array([stable_fraction(f"{seed}/quality/{i}") < 0.2 for i in range(len(texts))])
    features = _vectorizer(cfg.n_features).transform(texts)
    model = SGDClassifier(loss="log_loss", alpha=cfg.l2, max_iter=cfg.epochs, tol=None,
                          random_state=seed)
    model.fit(features[~held_out], labels[~held_out])
    accuracy = float((model.predict(features[held_out]) == labels[held_out]).mean())
    with atomic_path(out_path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, coef=model.coef_[0].astype(np.float32),
                 intercept=np.float32(model.intercept_[0]), n_features=cfg.n_features)
    return {"positives": len(positives), "negatives": len(negatives),
            "held_out_accuracy": accuracy, "held_out_examples": int(held_out.sum())}


class QualityModel:
    def __init__(self, path):
        with np.load(path) as data:
            self.coef = data["coef"]
            self.intercept = float(data["intercept"])
            self.vectorizer = _vectorizer(int(data["n_features"]))

    def scores(self, texts: list[str]) -> np.ndarray:
        logits = self.vectorizer.transform(texts) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-logits))


class QualityScores(AttributeStep):
    """`quality__score`: the classifier's probability that a document reads like the
    reference text, over the whole document."""

    name = "quality"

    def __init__(self, model_path):
        super().__init__()
        self.model = QualityModel(model_path)

    def tag_batch(self, docs: list[dict]) -> list[Spans]:
        scores = self.model.scores([doc["text"] for doc in docs])
        self.counts["score_sum"] += float(scores.sum())
        return [{"score": [(0, len(doc["text"]), float(score))]}
                for doc, score in zip(docs, scores)]


def tag_quality(docs_path, model_path, out_path) -> dict:
    counts = run_step(QualityScores(model_path), [docs_path], [out_path])
    return {"documents": counts["documents"],
            "mean_score": counts.get("score_sum", 0.0) / max(counts["documents"], 1)}


@command("train-quality", DOCS, OUT, arg("--metrics"), CFG, SEED, job="train_quality",
         params=lambda args: {**args.cfg, "seed": args.seed}, inputs=("docs",),
         outputs=("out", "metrics"))
def train_quality_command(args, job) -> dict:
    """The quality classifier, trained on reference text against web text."""
    metrics = train_classifier(args.docs, args.out, args.cfg, args.seed)
    logging.getLogger(__name__).info("quality classifier: %s", metrics)
    write_json(args.metrics, metrics)
    return metrics


@command("tag-quality", arg("--docs"), arg("--model"), OUT,
         job=lambda args: f"tag/quality/{Path(args.out).name}", inputs=("docs", "model"),
         outputs=("out",))
def tag_quality_command(args, job) -> dict:
    """Quality scores of one documents shard."""
    return tag_quality(args.docs, args.model, args.out)
