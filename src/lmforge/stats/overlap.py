"""How much of one corpus is in another, by exact text and by URL (DuckDB)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from lmforge.io.duck import connect, sql_string
from lmforge.io.storage import atomic_path, document_files, write_text
from lmforge.runner import CFG, DOCS, OUT_DIR, arg, command
from lmforge.stats.analyses import docs_view, number
from lmforge.stats.config import StatsConfig
from lmforge.stats.report import table


def corpus_overlap(a_paths: list[str], b_paths: list[str], out_dir: str | Path,
                   cfg: StatsConfig | Mapping, names: tuple[str, str] = ("a", "b")) -> dict:
    """How much of corpus B is in corpus A and the reverse, by exact text and by URL."""
    cfg = StatsConfig.of(cfg)
    out_dir = Path(out_dir)
    con = connect(cfg.duckdb)
    tables = {}
    for name, paths in (("a", a_paths), ("b", b_paths)):
        docs_view(con, [str(p) for p in paths])
        con.execute(f"CREATE TABLE {name} AS SELECT md5(text) AS h, url FROM docs")
        tables[name] = con.table(name)
    query = """
        SELECT '{x}' AS side, '{name}' AS corpus, count(*) AS documents,
               count(*) FILTER (WHERE h IN (SELECT h FROM {y})) AS texts_in_other,
               count(*) FILTER (WHERE url IN (SELECT url FROM {y})) AS urls_in_other,
               texts_in_other / count(*) AS share_texts_in_other,
               urls_in_other / count(*) AS share_urls_in_other
        FROM {x}"""
    sides = [query.format(x=x, y=y, name=name.replace("'", ""))
             for (x, y), name in zip((("a", "b"), ("b", "a")), names)]
    con.execute("CREATE TABLE overlap AS " + " UNION ALL ".join(sides))
    with atomic_path(out_dir / "overlap.parquet") as tmp:
        con.execute(f"COPY (SELECT * FROM overlap ORDER BY side) TO {sql_string(str(tmp))} "
                    "(FORMAT parquet)")
    frame = con.sql("SELECT * FROM overlap ORDER BY side").pl()
    write_text(out_dir / "overlap.md", "\n".join(["# Corpus overlap", ""] + table(frame)) + "\n")
    return {f"{row['side']}_{k}": number(row[k]) for row in frame.iter_rows(named=True)
            for k in ("documents", "texts_in_other", "urls_in_other")}


@command("overlap", DOCS, arg("--b", nargs="+"), OUT_DIR, CFG,
         job=lambda args: f"overlap/{Path(args.out_dir).name}", params=lambda args: None,
         inputs=("docs", "b"), outputs=("out_dir",))
def overlap_command(args, job) -> dict:
    """Share of each corpus's texts and URLs found in the other."""
    args.b = document_files(args.b)
    names = tuple(Path(args.out_dir).name.split("__", 1))
    result = corpus_overlap(args.docs, args.b, args.out_dir, args.cfg,
                            names if len(names) == 2 else ("a", "b"))
    logging.getLogger(__name__).info("overlap: %s", result)
    return result
