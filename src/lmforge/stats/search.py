"""Documents that hold an exact phrase or match a regex, counted in DuckDB."""

from __future__ import annotations

import json
import tempfile

import duckdb

from lmforge.io.duck import connect
from lmforge.runner import DOCS, arg, command, json_object
from lmforge.stats.analyses import docs_view


def search(paths: list[str], cfg: dict, phrase: str | None = None, regex: str | None = None,
           limit: int = 100) -> dict:
    """Documents containing an exact phrase or matching a regex (RE2): count and ids."""
    if (phrase is None) == (regex is None):
        raise ValueError("give exactly one of a phrase or a regex")
    con = connect(cfg["duckdb"])
    docs_view(con, [str(p) for p in paths])
    condition = "contains(text, $q)" if phrase is not None else "regexp_matches(text, $q)"
    try:
        rows = con.execute(f"SELECT id, count(*) OVER () FROM docs WHERE {condition} "
                           f"ORDER BY id LIMIT {int(limit)}",
                           {"q": phrase if phrase is not None else regex}).fetchall()
    except duckdb.InvalidInputException as err:
        raise ValueError(f"bad regular expression: {err}") from None
    count, ids = (rows[0][1] if rows else 0), [row[0] for row in rows]
    return {"query": phrase if phrase is not None else regex,
            "kind": "phrase" if phrase is not None else "regex", "documents": count, "ids": ids}


DEFAULT_DUCKDB = {"memory_limit": "2GB", "threads": 2, "temp_directory": tempfile.gettempdir()}


@command("search", DOCS, arg("--cfg", type=json_object, default={"duckdb": DEFAULT_DUCKDB}),
         arg("--phrase", default=None), arg("--regex", default=None),
         arg("--limit", type=int, default=100), tracked=False)
def search_command(args, job) -> None:
    """Count (and list) the documents holding an exact phrase or matching a regex."""
    result = search(args.docs, args.cfg, phrase=args.phrase, regex=args.regex, limit=args.limit)
    print(json.dumps(result, indent=2, ensure_ascii=False))
