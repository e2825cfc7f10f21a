"""Near-duplicate documents with MinHash-LSH, as scatter/gather jobs (datatrove's and NeMo
Curator's plan), each job's memory bounded by its shard, its bucket or the duplicates:

1. `write_signatures`, one job per shard: each document's MinHash signature (bands × rows
   permutations of its word 5-gram shingles) and, per band, a 128-bit digest of the band,
   split into `partitions` bucket files by that digest.
2. `candidate_pairs`, one job per bucket: documents sharing a band, each paired with the
   first document (in corpus order) of its band group.
3. `clusters`, one job: the candidate pairs whose estimated Jaccard similarity reaches
   `min_jaccard` (0: the shared band alone decides, datatrove's rule) are joined by union-find
   (connected components); the first document of each cluster is kept and the others are
   duplicates, scored by their highest similarity to a member. It runs in DuckDB out of core,
   so its memory is DuckDB's limit whatever the number of pairs.
4. `write_near_duplicates`, one job per shard: the `dedup_minhash__duplicate` attributes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.data.attributes import AttributeStep, Spans, run_step
from lmforge.data.dedup import (
    UNIT_BITS,
    DedupConfig,
    bucket_file,
    check_fresh,
    units_of_shard,
    write_buckets,
)
from lmforge.data.text import normalized_words
from lmforge.io.duck import connect, sql_list, sql_string
from lmforge.io.storage import atomic_dir, atomic_path, read_jsonl
from lmforge.runner import CFG, OUT, OUT_DIR, arg, command

log = logging.getLogger(__name__)

BAND_SCHEMA = pa.schema([("band", pa.int16()), ("h1", pa.uint64()), ("h2", pa.uint64()),
                         ("unit", pa.int64())])
BANDS, SIGNATURES = "bands", "signatures.parquet"

def shingles(text: str, n: int) -> list[bytes]:
    """Word n-grams of the normalised text."""
    words = normalized_words(text)
    if len(words) < n:
        return [" ".join(words).encode("utf-8")]
    return sorted({" ".join(words[i : i + n]).encode("utf-8") for i in range(len(words) - n + 1)})


def signature_matrix(docs_path, cfg: DedupConfig) -> np.ndarray:
    """The shard's signatures, one uint64 row of bands × rows per document."""
    from datasketch import MinHash

    mh = cfg.minhash
    num_perm = mh.bands * mh.rows
    template = MinHash(num_perm=num_perm, seed=mh.seed)
    rows = []
    for doc in read_jsonl(docs_path):
        minhash = template.copy()
        minhash.update_batch(shingles(doc["text"], mh.ngram))
        rows.append(minhash.hashvalues.astype(np.uint64))
    return np.stack(rows) if rows else np.zeros((0, num_perm), dtype=np.uint64)


def write_signatures(docs_path, shard_index: int, out_dir, cfg: DedupConfig | Mapping) -> dict:
    """Scatter: `signatures.parquet` (unit, signature) and the band digests' bucket files."""
    cfg = DedupConfig.of(cfg)
    matrix = signature_matrix(docs_path, cfg)
    units = (shard_index << UNIT_BITS) + np.arange(len(matrix), dtype=np.int64)
    rows = cfg.minhash.rows
    digests = np.frombuffer(b"".join(
        hashlib.blake2b(matrix[i, band * rows:(band + 1) * rows].tobytes(),
                        digest_size=16).digest()
        for i in range(len(matrix)) for band in range(cfg.minhash.bands)),
        dtype="<u8").reshape(-1, 2)
    bands = np.tile(np.arange(cfg.minhash.bands, dtype=np.int16), len(matrix))
    band_units = np.repeat(units, cfg.minhash.bands)
    with atomic_dir(out_dir) as tmp:
        signature = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel(), pa.uint64()),
                                                      matrix.shape[1])
        pq.write_table(pa.table({"unit": units, "signature": signature}), tmp / SIGNATURES)
        write_buckets(tmp, BANDS, cfg.partitions, digests[:, 0],
                      [bands, digests[:, 0], digests[:, 1], band_units], BAND_SCHEMA)
    return {"documents": len(matrix), "num_perm": int(matrix.shape[1])}


def candidate_pairs(signature_dirs: list, bucket: int, out_path,
                    cfg: DedupConfig | Mapping) -> dict:
    """Gather one bucket: (first, later) units of every band group with more than one
    document, distinct and sorted."""
    cfg = DedupConfig.of(cfg)
    con = connect(cfg.duckdb)
    files = [Path(d) / bucket_file(BANDS, bucket) for d in signature_dirs]
    con.execute(f"""
        CREATE TEMP TABLE pairs AS
        WITH bands AS (SELECT band, h1, h2, unit FROM read_parquet({sql_list(files)})),
             first AS (SELECT band, h1, h2, min(unit) AS first FROM bands
                       GROUP BY band, h1, h2 HAVING count(*) > 1)
        SELECT DISTINCT first AS a, unit AS b FROM bands JOIN first USING (band, h1, h2)
        WHERE unit > first""")
    with atomic_path(out_path) as tmp:  # streamed by DuckDB
        con.execute(f"COPY (SELECT * FROM pairs ORDER BY a, b) TO {sql_string(str(tmp))} "
                    "(FORMAT parquet)")
    pairs = con.execute("SELECT count(*) FROM pairs").fetchone()[0]
    con.close()
    return {"candidate_pairs": pairs}


def clusters(pair_paths: list, signature_dirs: list, out_path, cfg: DedupConfig | Mapping) -> dict:
    """The duplicates of every cluster but its first document: (unit, cluster, score), sorted
    by unit. All in DuckDB, out of core under its memory limit: no table of the job grows in
    Python's memory with the corpus or with the duplicates."""
    cfg = DedupConfig.of(cfg)
    width = cfg.minhash.bands * cfg.minhash.rows
    signatures = sql_list(Path(d) / SIGNATURES for d in signature_dirs)
    con = connect(cfg.duckdb)
    con.execute(f"CREATE TEMP TABLE pairs AS SELECT DISTINCT a, b "
                f"FROM read_parquet({sql_list(pair_paths)})")
    # The estimated Jaccard similarity of each pair: the share of equal signature entries.
    # Only the signatures of documents in a pair are joined.
    con.execute(f"""
        CREATE TEMP TABLE kept AS
        WITH needed AS (SELECT unit, signature FROM read_parquet({signatures})
                        WHERE unit IN (SELECT a FROM pairs UNION SELECT b FROM pairs)),
             scored AS (
                SELECT a, b, list_sum(list_transform(
                    range(1, {width + 1}), lambda i: (x.signature[i] = y.signature[i])::INTEGER
                )) / {width} AS similarity
                FROM pairs JOIN needed x ON x.unit = a JOIN needed y ON y.unit = b)
        SELECT * FROM scored WHERE similarity >= {cfg.minhash.min_jaccard}""")
    con.execute("""
        CREATE TEMP TABLE edges AS
        SELECT a AS node, b AS other, similarity FROM kept
        UNION ALL SELECT b, a, similarity FROM kept""")
    # Union-find out of core: each node takes the smallest label among itself and its
    # neighbours, then its label's label (pointer jumping), until nothing changes; each node
    # ends labelled with the smallest unit of its connected component (its first document).
    con.execute("CREATE TEMP TABLE label AS SELECT node, least(node, min(other)) AS label "
                "FROM edges GROUP BY node")
    rounds = 0
    while True:
        rounds += 1
        con.execute("""
            CREATE OR REPLACE TEMP TABLE next AS
            WITH spread AS (SELECT e.node, min(l.label) AS label
                            FROM edges e JOIN label l ON l.node = e.other GROUP BY e.node)
            SELECT own.node, least(own.label, spread.label, jump.label) AS label
            FROM label own JOIN spread USING (node) JOIN label jump ON jump.node = own.label""")
        changed = con.execute("SELECT count(*) FROM next JOIN label USING (node) "
                              "WHERE next.label <> label.label").fetchone()[0]
        con.execute("DROP TABLE label; ALTER TABLE next RENAME TO label")
        if not changed:
            break
    con.execute("""
        CREATE TEMP TABLE duplicates AS
        SELECT node AS unit, label AS cluster, max(similarity) AS score
        FROM edges JOIN label USING (node) WHERE label < node GROUP BY node, label""")
    with atomic_path(out_path) as tmp:  # streamed by DuckDB
        con.execute(f"COPY (SELECT unit, cluster, score FROM duplicates ORDER BY unit) "
                    f"TO {sql_string(str(tmp))} (FORMAT parquet)")
    found = {"candidate_pairs": con.execute("SELECT count(*) FROM pairs").fetchone()[0],
             "similar_pairs": con.execute("SELECT count(*) FROM kept").fetchone()[0],
             "clusters": con.execute("SELECT count(DISTINCT cluster) FROM duplicates"
                                     ).fetchone()[0],
             "duplicates": con.execute("SELECT count(*) FROM duplicates").fetchone()[0],
             "union_find_rounds": rounds}
    con.close()
    return found


class NearDuplicates(AttributeStep):
    """`dedup_minhash__duplicate` over a document in a cluster whose first document is
    another, scored by its highest estimated Jaccard similarity to a cluster member."""

    name = "dedup_minhash"
    score_digits = 4

    def __init__(self, scores: dict[int, float]):
        super().__init__()
        self.scores, self.position = scores, 0

    def tag(self, doc: dict) -> Spans:
        position, self.position = self.position, self.position + 1
        if position not in self.scores:
            return {}
        return {"duplicate": [(0, len(doc["text"]), self.scores[position])]}


def write_near_duplicates(docs_path, shard_index: int, clusters_path, out_path,
                          cfg: DedupConfig | Mapping) -> dict:
    cfg = DedupConfig.of(cfg)
    scores = units_of_shard([clusters_path], shard_index, "score", cfg.duckdb)
    counts = run_step(NearDuplicates(scores), [docs_path], [out_path])
    check_fresh(scores, counts["documents"], docs_path)
    return {"documents": counts["documents"], "duplicates": len(scores)}


def near_duplicates(docs_paths: list, outs: list, work_dir, cfg: DedupConfig | Mapping) -> dict:
    """Every step in this process, in the workflow's order (tests, benchmarks, one machine)."""
    cfg = DedupConfig.of(cfg)
    work_dir = Path(work_dir)
    sig_dirs = [work_dir / "signatures" / f"{i:05d}" for i in range(len(docs_paths))]
    for index, (docs, sig_dir) in enumerate(zip(docs_paths, sig_dirs, strict=True)):
        write_signatures(docs, index, sig_dir, cfg)
    pair_paths = [work_dir / "pairs" / f"bucket-{b:04d}.parquet" for b in range(cfg.partitions)]
    for bucket, path in enumerate(pair_paths):
        candidate_pairs(sig_dirs, bucket, path, cfg)
    found = clusters(pair_paths, sig_dirs, work_dir / "clusters.parquet", cfg)
    for index, (docs, out) in enumerate(zip(docs_paths, outs, strict=True)):
        write_near_duplicates(docs, index, work_dir / "clusters.parquet", out, cfg)
    return found


@command("minhash", arg("--docs"), arg("--shard-index", type=int), OUT_DIR, CFG,
         job=lambda args: f"minhash/{Path(args.out_dir).name}", inputs=("docs",),
         outputs=("out_dir",))
def minhash_command(args, job) -> dict:
    """MinHash signatures of one documents shard, with its band digests in bucket files."""
    return write_signatures(args.docs, args.shard_index, args.out_dir, args.cfg)


@command("minhash-bucket", arg("--signatures", nargs="+"), arg("--bucket", type=int), OUT, CFG,
         job=lambda args: f"minhash/bucket-{args.bucket:04d}", inputs=("signatures",),
         outputs=("out",))
def minhash_bucket_command(args, job) -> dict:
    """Candidate pairs of one bucket of band digests."""
    return candidate_pairs(args.signatures, args.bucket, args.out, args.cfg)


@command("minhash-clusters", arg("--pairs", nargs="+"), arg("--signatures", nargs="+"), OUT,
         CFG, job="minhash/clusters", inputs=("pairs", "signatures"), outputs=("out",))
def minhash_clusters_command(args, job) -> dict:
    """Near-duplicate clusters from every bucket's candidate pairs."""
    found = clusters(args.pairs, args.signatures, args.out, args.cfg)
    log.info("minhash clusters: %s", found)
    return found


@command("dedup-minhash", arg("--docs"), arg("--shard-index", type=int), arg("--clusters"), OUT,
         CFG, job=lambda args: f"dedup_minhash/{Path(args.docs).name.split('.')[0]}",
         inputs=("docs", "clusters"), outputs=("out",))
def dedup_minhash_command(args, job) -> dict:
    """One shard's near-duplicate attributes."""
    return write_near_duplicates(args.docs, args.shard_index, args.clusters, args.out, args.cfg)
