"""WIMBD-style corpus analyses ("What's In My Big Data?", Elazar et al. 2023) in DuckDB.

Two passes. A Python pass over the shards (one job per shard, `stats-measure`) measures what
needs a model, a regex DuckDB's RE2 cannot run, or set look-ups, per document: tokenizer
tokens, PII matches by type (the tagger's patterns, which use look-behind), toxic sentences
(the toxicity tagger's model) and the evaluation items the document contains (13-gram overlap
and verbatim), into `documents/*.parquet`. Then every analysis is DuckDB SQL over the corpus
(parsed once into an on-disk scratch table) and that table, under the configured memory limit
and temp directory, so a corpus larger than memory spills to disk; each result is written as
`<analysis>.parquet`, then plots and `summary.md`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from lmforge.eval.items import task_files
from lmforge.io.duck import connect, sql_list, sql_string
from lmforge.io.storage import (
    atomic_path,
    write_json,
    write_text,
)
from lmforge.runner import CFG, DOCS, OUT, OUT_DIR, arg, command, json_object
from lmforge.stats.config import NgramsConfig, StatsConfig
from lmforge.stats.measure import PII_KINDS, measure_documents, measure_shard, task_index
from lmforge.stats.report import markdown, plots

ANALYSES = (
    "summary", "length_histogram", "domains", "schemes", "suffixes", "dates", "languages",
    "ngrams", "duplicate_texts", "duplicate_urls", "duplicate_cluster_sizes", "pii", "toxic",
    "contamination",
)
PLOTS = ("length_histogram", "domains", "ngrams", "languages", "dates")


def docs_view(con, paths: list[str], kind: str = "VIEW") -> None:
    con.execute(
        f"CREATE OR REPLACE {kind} docs AS SELECT id, text, source, created, metadata.url AS url "
        f"FROM read_json({sql_list(paths)}, format='newline_delimited', compression='gzip', "
        "columns={id: 'VARCHAR', text: 'VARCHAR', source: 'VARCHAR', created: 'VARCHAR', "
        "metadata: 'STRUCT(url VARCHAR)'})"
    )


# ---------------------------------------------------------------------------------------------
# Python pass: per-document measurements that need our tokenizer, patterns or models.


# ---------------------------------------------------------------------------------------------
# DuckDB analyses.

_WORDS = "string_split_regex(trim(text), '\\s+')"
QUERIES = {
    "summary": f"""
        SELECT count(*) AS documents, coalesce(sum(length(text)), 0) AS characters,
               coalesce(sum(CASE WHEN trim(text) = '' THEN 0 ELSE len({_WORDS}) END), 0)
                   AS whitespace_tokens,
               (SELECT sum(tokenizer_tokens) FROM measured) AS tokenizer_tokens,
               count(DISTINCT md5(text)) AS distinct_texts, count(DISTINCT url) AS distinct_urls,
               coalesce(median(length(text)), 0) AS median_characters
        FROM docs""",
    "length_histogram": """
        SELECT floor(log2(greatest(length(text), 1)))::INTEGER AS log2_chars_bucket,
               count(*) AS documents
        FROM docs GROUP BY 1 ORDER BY 1""",
    "domains": """
        SELECT lower(regexp_extract(url, '^[a-zA-Z][a-zA-Z0-9+.-]*://([^/:?#]+)', 1)) AS domain,
               count(*) AS documents, sum(length(text)) AS characters
        FROM docs GROUP BY 1 ORDER BY documents DESC, domain""",
    "schemes": """
        SELECT lower(regexp_extract(url, '^([a-zA-Z][a-zA-Z0-9+.-]*)://', 1)) AS scheme,
               count(*) AS documents
        FROM docs GROUP BY 1 ORDER BY documents DESC, scheme""",
    "suffixes": """
        SELECT lower(regexp_extract(url, '^[a-zA-Z][a-zA-Z0-9+.-]*://[^/:?#]*\\.([a-zA-Z0-9-]+)'
                                         '(?:[/:?#]|$)', 1)) AS suffix,
               count(*) AS documents
        FROM docs GROUP BY 1 ORDER BY documents DESC, suffix""",
    "dates": """
        SELECT strftime(try_cast(created AS TIMESTAMP), '%Y-%m-%d') AS created_day,
               count(*) AS documents
        FROM docs GROUP BY 1 ORDER BY 1""",
    "duplicate_texts": """
        SELECT md5(text) AS text_md5, count(*) AS cluster_size, min(id) AS example_id
        FROM docs GROUP BY 1 HAVING count(*) > 1 ORDER BY cluster_size DESC, text_md5""",
    "duplicate_urls": """
        SELECT url, count(*) AS cluster_size
        FROM docs WHERE url IS NOT NULL GROUP BY 1 HAVING count(*) > 1
        ORDER BY cluster_size DESC, url""",
    "duplicate_cluster_sizes": """
        SELECT 'text' AS key, cluster_size, count(*) AS clusters FROM duplicate_texts GROUP BY 2
        UNION ALL
        SELECT 'url', cluster_size, count(*) FROM duplicate_urls GROUP BY 2
        ORDER BY key, cluster_size""",
    "pii": " UNION ALL ".join(
        f"SELECT '{kind}' AS type, coalesce(sum(pii_{kind}), 0) AS matches, "
        f"count(*) FILTER (WHERE pii_{kind} > 0) AS documents FROM measured"
        for kind in PII_KINDS),
    "toxic": """
        SELECT coalesce(sum(toxic_sentences), 0) AS toxic_sentences,
               count(*) FILTER (WHERE toxic_sentences > 0) AS documents_with_toxic_sentences,
               count(*) AS documents
        FROM measured""",
    "contamination": """
        WITH hits AS (SELECT id, unnest(items_ngram) AS item FROM measured),
             exact AS (SELECT DISTINCT unnest(items_exact) AS item FROM measured),
             docs_per_task AS (SELECT task, count(DISTINCT id) AS documents
                               FROM hits JOIN task_items USING (item) GROUP BY task)
        SELECT task, count(*) AS items,
               count(*) FILTER (WHERE item IN (SELECT item FROM hits)) AS contaminated_ngram,
               count(*) FILTER (WHERE item IN (SELECT item FROM exact)) AS contaminated_exact,
               contaminated_ngram / count(*) AS share_ngram,
               contaminated_exact / count(*) AS share_exact,
               coalesce(any_value(d.documents), 0) AS contaminated_documents
        FROM task_items LEFT JOIN docs_per_task d USING (task) GROUP BY task ORDER BY task""",
}


def _zipped(column: str, n: int) -> str:
    """The word n-grams (n ≥ 2) of a list column, as tuples: list_zip of n shifted slices."""
    slices = [f"{column}[{i}:-{n - i + 1}]" for i in range(1, n)] + [f"{column}[{n}:]"]
    return f"list_zip({', '.join(slices)})"


def _ngram_query(n: int, cfg: NgramsConfig) -> str:
    """Most and least common word n-grams: exact counts (DuckDB spills the GROUP BY to disk),
    or with `method: approximate` DuckDB's bounded-memory approx_top_k (no least common).
    n-grams are zipped from shifted slices of the word list: list_zip is vectorised, where a
    lambda per position is an order of magnitude slower."""
    k = int(cfg.top_k)
    if n == 1:
        grams = f"SELECT unnest({_WORDS}) AS g FROM docs WHERE trim(text) <> ''"
        as_text = "g"
    else:
        grams = (f"SELECT unnest({_zipped('w', n)}) AS g "
                 f"FROM (SELECT {_WORDS} AS w FROM docs WHERE trim(text) <> '')")
        as_text = "concat_ws(' ', " + ", ".join(f"g[{i}]" for i in range(1, n + 1)) + ")"
    if cfg.method == "approximate":
        return (f"SELECT {n} AS n, 'most' AS rank_kind, unnest(approx_top_k({as_text}, {k})) "
                f"AS ngram, NULL::BIGINT AS count FROM ({grams})")
    return f"""
        WITH counts AS (SELECT g, count(*) AS count FROM ({grams}) GROUP BY g)
        (SELECT {n} AS n, 'most' AS rank_kind, {as_text} AS ngram, count FROM counts
         ORDER BY count DESC, ngram LIMIT {k})
        UNION ALL
        (SELECT {n}, 'least', {as_text} AS ngram, count FROM counts
         ORDER BY count, ngram LIMIT {k})"""


def _languages_query(lang_paths: list[str]) -> str:
    if not lang_paths:
        return "SELECT 'not tagged' AS language, count(*) AS documents FROM docs"
    return f"""
        WITH lang AS (
            SELECT DISTINCT ON (id) id, replace(json_keys(attributes)[1], 'lang__', '') AS language
            FROM read_json({sql_list(lang_paths)}, format='newline_delimited',
                           compression='gzip', columns={{id: 'VARCHAR', attributes: 'JSON'}}))
        SELECT coalesce(lang.language, 'not tagged') AS language, count(*) AS documents
        FROM docs LEFT JOIN lang USING (id) GROUP BY 1 ORDER BY documents DESC, language"""


def corpus_stats(paths: list[str], out_dir: str | Path, cfg: StatsConfig | Mapping, *,
                 tokenizer=None, tasks: dict | None = None, lang_paths: list[str] = (),
                 measured: list | None = None) -> dict:
    """Every analysis of a corpus: `<analysis>.parquet`, plots, `summary.md`, `summary.json`.
    `measured`: the per-shard pass's parquet files; without them the pass runs here, one
    process per file."""
    cfg = StatsConfig.of(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if measured is None:
        measured = measure_documents([str(p) for p in paths], out_dir, tokenizer, tasks, cfg,
                                     int(cfg.duckdb.threads))
    # The JSON is parsed once into a table in an on-disk scratch database, so the analyses
    # neither re-read the shards nor hold the corpus in memory.
    scratch = Path(cfg.duckdb.temp_directory) / f"stats-{os.getpid()}.duckdb"
    scratch.unlink(missing_ok=True)
    try:
        return _analyse(connect(cfg.duckdb, str(scratch)), paths, out_dir, measured, cfg,
                        tasks, lang_paths)
    finally:
        scratch.unlink(missing_ok=True)
        Path(f"{scratch}.wal").unlink(missing_ok=True)


def _analyse(con, paths, out_dir: Path, measured: list, cfg: StatsConfig, tasks,
             lang_paths) -> dict:
    docs_view(con, [str(p) for p in paths], kind="TABLE")
    con.execute(f"CREATE VIEW measured AS SELECT * FROM read_parquet({sql_list(measured)})")
    _, items = task_index(tasks, cfg.contamination_ngram)
    con.execute("CREATE TABLE task_items (task VARCHAR, item VARCHAR)")
    if items:
        con.executemany("INSERT INTO task_items VALUES (?, ?)",
                        [(task, item) for item, (task, _) in items.items()])
    queries = dict(QUERIES)
    queries["ngrams"] = " UNION ALL ".join(
        f"({_ngram_query(n, cfg.ngrams)})" for n in range(1, cfg.ngrams.max_n + 1))
    queries["languages"] = _languages_query([str(p) for p in lang_paths])
    frames = {}
    for name in ANALYSES:
        con.execute(f"CREATE TABLE {name} AS {queries[name]}")
        with atomic_path(out_dir / f"{name}.parquet") as tmp:
            con.execute(f"COPY {name} TO {sql_string(str(tmp))} (FORMAT parquet)")
        frames[name] = con.table(name).pl()  # polars, through Arrow
    summary = key_numbers(frames)
    plots(frames, out_dir, cfg.top_k)
    write_json(out_dir / "summary.json", summary)
    write_text(out_dir / "summary.md", markdown(summary, frames, cfg.top_k))
    con.close()
    return summary


def number(value):
    if value is None or value != value:  # NULL or NaN
        return None
    return int(value) if float(value).is_integer() else float(value)


def key_numbers(frames: dict) -> dict:
    summary = {k: number(v) for k, v in frames["summary"].row(0, named=True).items()}
    dup_texts, dup_urls = frames["duplicate_texts"], frames["duplicate_urls"]
    summary["duplicate_text_clusters"] = dup_texts.height
    summary["documents_in_duplicate_text_clusters"] = int(dup_texts["cluster_size"].sum())
    summary["duplicate_url_clusters"] = dup_urls.height
    summary["documents_in_duplicate_url_clusters"] = int(dup_urls["cluster_size"].sum())
    summary["domains"] = frames["domains"].height
    for row in frames["pii"].iter_rows(named=True):
        summary[f"pii_{row['type']}"] = int(row["matches"])
    summary["toxic_sentences"] = int(frames["toxic"]["toxic_sentences"][0])
    for row in frames["contamination"].iter_rows(named=True):
        summary[f"contaminated_{row['task']}_ngram"] = int(row["contaminated_ngram"])
        summary[f"contaminated_{row['task']}_exact"] = int(row["contaminated_exact"])
    return summary


TASKS = arg("--tasks", type=json_object, default=None,
            help="the tasks whose items the contamination analysis counts: name → spec")


@command("stats-measure", DOCS, OUT, CFG, arg("--tokenizer", default=None), TASKS,
         job=lambda args: f"stats/{Path(args.out).parent.parent.name}/{Path(args.out).stem}",
         inputs=("docs", "tokenizer", "task_files"), outputs=("out",))
def stats_measure_command(args, job) -> dict:
    """The per-document pass of one shard: tokens, PII, toxic sentences, evaluation items."""
    args.task_files = task_files(args.tasks)
    return {"documents": measure_shard(args.docs, args.out, args.tokenizer, args.tasks,
                                       StatsConfig.of(args.cfg))}


@command("stats", DOCS, OUT_DIR, CFG, arg("--tokenizer", default=None), TASKS,
         arg("--lang-attributes", nargs="*", default=[]),
         arg("--measured", nargs="*", default=None,
             help="the shards' stats-measure files (without them the pass runs here)"),
         job=lambda args: f"stats/{Path(args.out_dir).name}",
         inputs=("docs", "tokenizer", "task_files", "lang_attributes", "measured"),
         outputs=("out_dir",))
def stats_command(args, job) -> dict:
    """WIMBD analyses of one corpus (DuckDB), with plots and a summary."""
    args.task_files = task_files(args.tasks)
    summary = corpus_stats(args.docs, args.out_dir, args.cfg, tokenizer=args.tokenizer,
                           tasks=args.tasks, lang_paths=args.lang_attributes,
                           measured=args.measured)
    logging.getLogger(__name__).info("stats: %s", summary)
    for name in ("summary.md", *(f"{plot}.png" for plot in PLOTS)):
        job.log_artifact(Path(args.out_dir) / name)
    return {k: v for k, v in summary.items() if v is not None}
