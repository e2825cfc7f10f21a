TAGGERS = config["curate"]["taggers"]
# Every attribute set the mixer reads, each one file per documents shard.
ATTRIBUTE_SETS = (
    TAGGERS
    + list(DEDUP_METHODS)
    + [step.name for step in (NearDuplicates, Contamination, QualityScores)]
)
PARTITIONS = config["curate"]["dedup"]["partitions"]
BUCKETS = [f"bucket-{b:04d}" for b in range(PARTITIONS)]


wildcard_constraints:
    tagger="|".join(TAGGER_REGISTRY),
    shard=r"shard-\d+",
    bucket=r"bucket-\d+",


rule tag:
    input:
        code("tag"),
        docs=f"{R}/documents/{{source}}/{{shard}}.jsonl.gz",
    output:
        f"{R}/attributes/{{tagger}}/{{source}}/{{shard}}.jsonl.gz",
    log:
        f"{R}/logs/tag/{{tagger}}/{{source}}/{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/tag/{{tagger}}/{{source}}/{{shard}}.tsv"
    priority: 1
    conda:
        "../../envs/data.yaml"
    params:
        cfg=lambda w: (
            cfg_json("curate", w.tagger) if w.tagger in config["curate"] else "{}"
        ),
    shell:
        "lmforge tag --tagger {wildcards.tagger} --docs {input.docs} --out {output} "
        "--cfg {params.cfg:q} > {log} 2>&1"


# Deduplication as scatter/gather jobs (lmforge.data.dedup, lmforge.data.minhash): keys per
# shard, split into PARTITIONS buckets; one job per bucket finds the later copies; attributes
# per shard. No job holds the keys of the whole corpus.
rule dedup_keys:
    input:
        code("dedup-keys"),
        docs=f"{R}/documents/{{source}}/{{shard}}.jsonl.gz",
    output:
        directory(f"{R}/dedup/keys/{{source}}/{{shard}}"),
    log:
        f"{R}/logs/dedup/keys/{{source}}/{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/dedup/keys/{{source}}/{{shard}}.tsv"
    priority: 1
    conda:
        "../../envs/data.yaml"
    params:
        cfg=cfg_json("curate", "dedup"),
        index=lambda w: SHARD_INDEX[w.shard],
    shell:
        "lmforge dedup-keys --docs {input.docs} --shard-index {params.index} "
        "--out-dir {output} --cfg {params.cfg:q} > {log} 2>&1"


rule dedup_bucket:
    input:
        code("dedup-bucket"),
        key_dirs=[f"{R}/dedup/keys/{{source}}/{s}" for s in SHARDS],
    output:
        directory(f"{R}/dedup/later/{{source}}/{{bucket}}"),
    log:
        f"{R}/logs/dedup/later/{{source}}/{{bucket}}.log",
    benchmark:
        f"{R}/benchmarks/dedup/later/{{source}}/{{bucket}}.tsv"
    priority: 1
    conda:
        "../../envs/data.yaml"
    threads: config["curate"]["dedup"]["duckdb"]["threads"]
    resources:
        mem_mb=DEDUP_MEM_MB,
    params:
        cfg=cfg_json("curate", "dedup"),
        bucket=lambda w: BUCKETS.index(w.bucket),
    shell:
        "lmforge dedup-bucket --keys {input.key_dirs} --bucket {params.bucket} "
        "--out-dir {output} --cfg {params.cfg:q} > {log} 2>&1"


rule dedup:
    input:
        code("dedup"),
        docs=f"{R}/documents/{{source}}/{{shard}}.jsonl.gz",
        later=[f"{R}/dedup/later/{{source}}/{b}" for b in BUCKETS],
    output:
        **{
            method: f"{R}/attributes/{method}/{{source}}/{{shard}}.jsonl.gz"
            for method in DEDUP_METHODS
        },
    log:
        f"{R}/logs/dedup/{{source}}/{{shard}}.log",
    priority: 1
    conda:
        "../../envs/data.yaml"
    params:
        cfg=cfg_json("curate", "dedup"),
        index=lambda w: SHARD_INDEX[w.shard],
        outs=lambda w, output: " ".join(
            f"--out-{m.removeprefix('dedup_')} {output[m]}" for m in DEDUP_METHODS
        ),
    shell:
        "lmforge dedup --docs {input.docs} --shard-index {params.index} "
        "--later {input.later} {params.outs} --cfg {params.cfg:q} > {log} 2>&1"


rule minhash:
    input:
        code("minhash"),
        docs=f"{R}/documents/{{source}}/{{shard}}.jsonl.gz",
    output:
        directory(f"{R}/dedup/minhash/{{source}}/{{shard}}"),
    log:
        f"{R}/logs/minhash/{{source}}/{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/minhash/{{source}}/{{shard}}.tsv"
    priority: 1
    conda:
        "../../envs/data.yaml"
    params:
        cfg=cfg_json("curate", "dedup"),
        index=lambda w: SHARD_INDEX[w.shard],
    shell:
        "lmforge minhash --docs {input.docs} --shard-index {params.index} "
        "--out-dir {output} --cfg {params.cfg:q} > {log} 2>&1"


rule minhash_bucket:
    input:
        code("minhash-bucket"),
        signatures=[f"{R}/dedup/minhash/{{source}}/{s}" for s in SHARDS],
    output:
        f"{R}/dedup/minhash_pairs/{{source}}/{{bucket}}.parquet",
    log:
        f"{R}/logs/minhash/pairs/{{source}}/{{bucket}}.log",
    benchmark:
        f"{R}/benchmarks/minhash/pairs/{{source}}/{{bucket}}.tsv"
    priority: 1
    conda:
        "../../envs/data.yaml"
    threads: config["curate"]["dedup"]["duckdb"]["threads"]
    resources:
        mem_mb=DEDUP_MEM_MB,
    params:
        cfg=cfg_json("curate", "dedup"),
        bucket=lambda w: BUCKETS.index(w.bucket),
    shell:
        "lmforge minhash-bucket --signatures {input.signatures} --bucket {params.bucket} "
        "--out {output} --cfg {params.cfg:q} > {log} 2>&1"


rule minhash_clusters:
    input:
        code("minhash-clusters"),
        pairs=[f"{R}/dedup/minhash_pairs/{{source}}/{b}.parquet" for b in BUCKETS],
        signatures=[f"{R}/dedup/minhash/{{source}}/{s}" for s in SHARDS],
    output:
        f"{R}/dedup/minhash_clusters/{{source}}.parquet",
    log:
        f"{R}/logs/minhash/clusters/{{source}}.log",
    priority: 1
    conda:
        "../../envs/data.yaml"
    threads: config["curate"]["dedup"]["duckdb"]["threads"]
    resources:
        mem_mb=DEDUP_MEM_MB,
    params:
        cfg=cfg_json("curate", "dedup"),
    shell:
        "lmforge minhash-clusters --pairs {input.pairs} --signatures {input.signatures} "
        "--out {output} --cfg {params.cfg:q} > {log} 2>&1"


rule dedup_minhash:
    input:
        code("dedup-minhash"),
        docs=f"{R}/documents/{{source}}/{{shard}}.jsonl.gz",
        clusters=f"{R}/dedup/minhash_clusters/{{source}}.parquet",
    output:
        f"{R}/attributes/dedup_minhash/{{source}}/{{shard}}.jsonl.gz",
    log:
        f"{R}/logs/dedup/dedup_minhash/{{source}}/{{shard}}.log",
    priority: 1
    conda:
        "../../envs/data.yaml"
    params:
        cfg=cfg_json("curate", "dedup"),
        index=lambda w: SHARD_INDEX[w.shard],
    shell:
        "lmforge dedup-minhash --docs {input.docs} --shard-index {params.index} "
        "--clusters {input.clusters} --out {output} --cfg {params.cfg:q} > {log} 2>&1"


rule decontam:
    input:
        code("decontam"),
        unpack(decontam_task_inputs),
        docs=f"{R}/documents/{{source}}/{{shard}}.jsonl.gz",
    output:
        f"{R}/attributes/decontam/{{source}}/{{shard}}.jsonl.gz",
    log:
        f"{R}/logs/decontam/{{source}}/{{shard}}.log",
    priority: 1
    conda:
        "../../envs/data.yaml"
    params:
        cfg=cfg_json("curate", "decontam"),
        tasks=decontam_specs,
    shell:
        "lmforge decontam --docs {input.docs} --tasks {params.tasks:q} --out {output} "
        "--cfg {params.cfg:q} > {log} 2>&1"


rule train_quality:
    input:
        code("train-quality"),
        docs=docs("{source}"),
    output:
        model=f"{R}/quality/{{source}}/model.npz",
        metrics=f"{R}/quality/{{source}}/metrics.json",
    log:
        f"{R}/logs/train_quality/{{source}}.log",
    priority: 1
    conda:
        "../../envs/data.yaml"
    params:
        cfg=cfg_json("curate", "quality"),
        seed=SEED,
    shell:
        "lmforge train-quality --docs {input.docs} --out {output.model} "
        "--metrics {output.metrics} --cfg {params.cfg:q} --seed {params.seed} > {log} 2>&1"


rule tag_quality:
    input:
        code("tag-quality"),
        docs=f"{R}/documents/{{source}}/{{shard}}.jsonl.gz",
        model=f"{R}/quality/{{source}}/model.npz",
    output:
        f"{R}/attributes/quality/{{source}}/{{shard}}.jsonl.gz",
    log:
        f"{R}/logs/tag/quality/{{source}}/{{shard}}.log",
    priority: 1
    conda:
        "../../envs/data.yaml"
    shell:
        "lmforge tag-quality --docs {input.docs} --model {input.model} --out {output} "
        "> {log} 2>&1"


rule label_eval:
    input:
        code("label-eval"),
        labels=f"{R}/crawl/demo/labels.jsonl.gz",
        docs=docs("demo"),
        attributes=[
            f"{R}/attributes/{a}/demo/{s}.jsonl.gz"
            for a in ATTRIBUTE_SETS
            for s in SHARDS
        ],
    output:
        json=f"{R}/curation/demo/label_eval.json",
        md=report(
            f"{R}/curation/demo/label_eval.md",
            caption="../report/label_eval.rst",
            category="Curation",
        ),
    log:
        f"{R}/logs/label_eval.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "lmforge label-eval --labels {input.labels} --docs {input.docs} "
        "--attributes {input.attributes} --out-json {output.json} --out-md {output.md} "
        "> {log} 2>&1"


rule mix:
    input:
        code("mix"),
        docs=f"{R}/documents/{SOURCE}/{{shard}}.jsonl.gz",
        attributes=[
            f"{R}/attributes/{t}/{SOURCE}/{{shard}}.jsonl.gz" for t in ATTRIBUTE_SETS
        ],
    output:
        docs=directory(f"{R}/mixes/{{mix}}/{{shard}}"),
        funnel=f"{R}/mixes/{{mix}}/{{shard}}.funnel.json",
    log:
        f"{R}/logs/mix/{{mix}}/{{shard}}.log",
    priority: 1
    conda:
        "../../envs/data.yaml"
    params:
        cfg=lambda w: cfg_json("mixes", w.mix),
    shell:
        "lmforge mix --docs {input.docs} --attributes {input.attributes} --out {output.docs} "
        "--funnel {output.funnel} --cfg {params.cfg:q} > {log} 2>&1"


rule funnel:
    input:
        code("funnel"),
        funnels=[f"{R}/mixes/{{mix}}/{s}.funnel.json" for s in SHARDS],
    output:
        json=f"{R}/mixes/{{mix}}/funnel.json",
        md=report(
            f"{R}/mixes/{{mix}}/funnel.md",
            caption="../report/funnel.rst",
            category="Curation",
        ),
    log:
        f"{R}/logs/funnel/{{mix}}.log",
    conda:
        "../../envs/data.yaml"
    params:
        cfg=lambda w: cfg_json("mixes", w.mix),
    shell:
        "lmforge funnel --inputs {input.funnels} --cfg {params.cfg:q} "
        "--out-json {output.json} --out-md {output.md} > {log} 2>&1"
