"""The corpus analyses' plots and markdown summary, from the analyses' polars frames."""

from __future__ import annotations

from pathlib import Path

from lmforge.io.storage import save_figure


def _barh(ax, labels, values, title: str, xlabel: str) -> None:
    ax.barh([str(x) for x in labels][::-1], values.to_list()[::-1])
    ax.set_title(title)
    ax.set_xlabel(xlabel)


def plots(frames: dict, out_dir: Path, top_k: int) -> None:
    import matplotlib
    import polars as pl

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = frames["length_histogram"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([f"2^{b}" for b in hist["log2_chars_bucket"]], hist["documents"].to_list())
    ax.set(xlabel="document length (characters)", ylabel="documents",
           title="Document length distribution")
    save_figure(fig, out_dir / "length_histogram.png")

    domains = frames["domains"].head(top_k)
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(domains) + 1.2))
    _barh(ax, domains["domain"], domains["documents"], f"Top {len(domains)} domains", "documents")
    save_figure(fig, out_dir / "domains.png")

    grams = frames["ngrams"]
    most = grams.filter(pl.col("rank_kind") == "most")
    ns = sorted(most["n"].unique().to_list()) or [1]
    fig, axes = plt.subplots(1, len(ns), figsize=(5 * len(ns), 0.3 * top_k + 1.5), squeeze=False)
    for ax, n in zip(axes[0], ns):
        part = most.filter(pl.col("n") == n).head(top_k)
        _barh(ax, part["ngram"], part["count"].fill_null(0), f"Most common {n}-grams", "count")
    save_figure(fig, out_dir / "ngrams.png")

    langs = frames["languages"].head(top_k)
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(langs) + 1.2))
    _barh(ax, langs["language"], langs["documents"], "Languages (lang tagger)", "documents")
    save_figure(fig, out_dir / "languages.png")

    dates = frames["dates"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([str(d) for d in dates["created_day"]], dates["documents"].to_list())
    ax.set(xlabel="crawl date", ylabel="documents", title="Crawl date distribution")
    ax.tick_params(axis="x", rotation=45)
    save_figure(fig, out_dir / "dates.png")


def table(frame, limit: int | None = None) -> list[str]:
    frame = frame if limit is None else frame.head(limit)
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    for row in frame.iter_rows():
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return lines


def markdown(summary: dict, frames: dict, top_k: int) -> str:
    lines = ["# Corpus statistics", "", "| statistic | value |", "| --- | ---: |"]
    lines += [f"| {key} | {value} |" for key, value in summary.items()]
    sections = [("Top domains", "domains", top_k), ("URL schemes", "schemes", None),
                ("Domain suffixes", "suffixes", top_k), ("Languages", "languages", top_k),
                ("Crawl dates", "dates", top_k), ("PII", "pii", None),
                ("Toxic language", "toxic", None),
                ("Benchmark contamination", "contamination", None),
                ("Duplicate cluster sizes", "duplicate_cluster_sizes", None),
                ("Most and least common n-grams", "ngrams", None)]
    for title, name, limit in sections:
        lines += ["", f"## {title}", ""] + table(frames[name], limit)
    return "\n".join(lines) + "\n"
