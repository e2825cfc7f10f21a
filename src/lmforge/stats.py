"""Corpus statistics in DuckDB (WIMBD-style), out of core under a configured memory limit.

DuckDB reads the gzip JSONL shards directly; each analysis is one SQL query whose result is
written as parquet, plus plots for the Snakemake report and a markdown summary.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from lmforge.storage import atomic_path, write_text

ANALYSES = ("summary", "length_histogram", "domains", "duplicate_texts", "duplicate_urls")


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def connect(cfg: dict) -> duckdb.DuckDBPyConnection:
    Path(cfg["temp_directory"]).mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{cfg['memory_limit']}'")
    con.execute(f"SET threads = {int(cfg['threads'])}")
    con.execute(f"SET temp_directory = {_sql_string(str(cfg['temp_directory']))}")
    con.execute("SET preserve_insertion_order = false")
    return con


def _docs_view(con, paths: list[str]) -> None:
    # DDL cannot take prepared parameters, so the file list is quoted as SQL literals.
    files = "[" + ", ".join(_sql_string(p) for p in paths) + "]"
    con.execute(
        "CREATE OR REPLACE VIEW docs AS SELECT id, text, source, metadata.url AS url "
        f"FROM read_json({files}, format='newline_delimited', compression='gzip', "
        "columns={id: 'VARCHAR', text: 'VARCHAR', source: 'VARCHAR', "
        "metadata: 'STRUCT(url VARCHAR)'})"
    )


QUERIES = {
    "summary": """
        SELECT count(*) AS documents, coalesce(sum(length(text)), 0) AS characters,
               coalesce(sum(len(string_split_regex(trim(text), '\\s+'))), 0)
                   AS whitespace_tokens,
               count(DISTINCT md5(text)) AS distinct_texts, count(DISTINCT url) AS distinct_urls,
               coalesce(median(length(text)), 0) AS median_characters
        FROM docs""",
    "length_histogram": """
        SELECT floor(log2(greatest(length(text), 1)))::INTEGER AS log2_chars_bucket,
               count(*) AS documents
        FROM docs GROUP BY 1 ORDER BY 1""",
    "domains": """
        SELECT regexp_extract(url, '^[a-zA-Z]+://([^/:]+)', 1) AS domain,
               count(*) AS documents, sum(length(text)) AS characters
        FROM docs GROUP BY 1 ORDER BY documents DESC, domain""",
    "duplicate_texts": """
        SELECT md5(text) AS text_md5, count(*) AS cluster_size, min(id) AS example_id
        FROM docs GROUP BY 1 HAVING count(*) > 1 ORDER BY cluster_size DESC, text_md5""",
    "duplicate_urls": """
        SELECT url, count(*) AS cluster_size
        FROM docs WHERE url IS NOT NULL GROUP BY 1 HAVING count(*) > 1
        ORDER BY cluster_size DESC, url""",
}


def corpus_stats(paths: list[str], out_dir: str | Path, cfg: dict) -> dict:
    """Run every analysis; write `<analysis>.parquet`, `summary.md`, and two PNG plots."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    con = connect(cfg["duckdb"])
    _docs_view(con, [str(p) for p in paths])
    frames = {}
    for name in ANALYSES:
        relation = con.sql(QUERIES[name])
        with atomic_path(out_dir / f"{name}.parquet") as tmp:
            relation.write_parquet(str(tmp))
        frames[name] = relation.fetchdf()
    summary = frames["summary"].iloc[0].to_dict()
    summary = {k: (int(v) if float(v).is_integer() else float(v)) for k, v in summary.items()}
    summary["duplicate_text_clusters"] = len(frames["duplicate_texts"])
    summary["documents_in_duplicate_text_clusters"] = int(
        frames["duplicate_texts"]["cluster_size"].sum()
    )
    summary["duplicate_url_clusters"] = len(frames["duplicate_urls"])
    summary["domains"] = len(frames["domains"])
    _plots(frames, out_dir, cfg["top_k"])
    write_text(out_dir / "summary.md", _markdown(summary, frames, cfg["top_k"]))
    return summary


def _plots(frames: dict, out_dir: Path, top_k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = frames["length_histogram"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([f"2^{b}" for b in hist["log2_chars_bucket"]], hist["documents"])
    ax.set_xlabel("document length (characters)")
    ax.set_ylabel("documents")
    ax.set_title("Document length distribution")
    fig.tight_layout()
    with atomic_path(out_dir / "length_histogram.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)

    domains = frames["domains"].head(top_k)
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(domains) + 1.2))
    ax.barh(domains["domain"][::-1], domains["documents"][::-1])
    ax.set_xlabel("documents")
    ax.set_title(f"Top {len(domains)} domains")
    fig.tight_layout()
    with atomic_path(out_dir / "domains.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def _markdown(summary: dict, frames: dict, top_k: int) -> str:
    lines = ["# Corpus statistics", "", "| statistic | value |", "| --- | ---: |"]
    lines += [f"| {key} | {value} |" for key, value in summary.items()]
    lines += ["", f"## Top {top_k} domains", "", "| domain | documents | characters |",
              "| --- | ---: | ---: |"]
    for row in frames["domains"].head(top_k).itertuples(index=False):
        lines.append(f"| {row.domain} | {row.documents} | {row.characters} |")
    return "\n".join(lines) + "\n"
