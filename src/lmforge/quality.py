"""A quality classifier the workflow trains itself (Dolma 1.7's and DCLM's recipe).

Positives are reference text, negatives random documents of the raw crawl; the model is
fastText's: a linear classifier over hashed word uni- and bigrams, here scikit-learn's
`HashingVectorizer` + logistic regression (SGD). Its weights are stored as plain arrays (npz),
never pickled, and scored documents get a `quality__score` span with P(reference).
"""

from __future__ import annotations

import random

import numpy as np

from lmforge import sources
from lmforge.storage import atomic_path, attribute_row, read_jsonl, stable_fraction, write_jsonl_gz


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


def train_classifier(docs_paths: list, out_path, cfg: dict, seed: int) -> dict:
    from sklearn.linear_model import SGDClassifier

    positives = reference_documents(cfg["reference"])
    crawl = [doc["text"] for path in docs_paths for doc in read_jsonl(path)]
    if not positives or not crawl:
        raise ValueError("the quality classifier needs reference text and crawl documents")
    rng = random.Random(seed)
    negatives = rng.sample(crawl, min(len(crawl), len(positives)))
    texts = positives + negatives
    labels = np.array([1] * len(positives) + [0] * len(negatives))
    held_out = np.array([stable_fraction(f"{seed}/quality/{i}") < 0.2 for i in range(len(texts))])
    features = _vectorizer(cfg["n_features"]).transform(texts)
    model = SGDClassifier(loss="log_loss", alpha=cfg["l2"], max_iter=cfg["epochs"], tol=None,
                          random_state=seed)
    model.fit(features[~held_out], labels[~held_out])
    accuracy = float((model.predict(features[held_out]) == labels[held_out]).mean())
    with atomic_path(out_path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, coef=model.coef_[0].astype(np.float32),
                 intercept=np.float32(model.intercept_[0]), n_features=cfg["n_features"])
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


def tag_quality(docs_path, model_path, out_path, batch_size: int = 256) -> dict:
    model = QualityModel(model_path)
    stats = {"documents": 0, "mean_score": 0.0}

    def rows():
        batch: list[dict] = []
        for doc in [*read_jsonl(docs_path), None]:
            if doc is not None:
                batch.append(doc)
            if batch and (doc is None or len(batch) == batch_size):
                for item, score in zip(batch, model.scores([d["text"] for d in batch])):
                    stats["documents"] += 1
                    stats["mean_score"] += float(score)
                    span = [0, len(item["text"]), round(float(score), 6)]
                    yield attribute_row(item, {"quality__score": [span]})
                batch = []

    write_jsonl_gz(out_path, rows())
    stats["mean_score"] /= max(stats["documents"], 1)
    return stats
