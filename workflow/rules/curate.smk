TAGGERS = config["curate"]["taggers"]
DEDUP = list(EXACT_DEDUP)
# Every attribute set the mixer reads, each one file per documents shard.
ATTRIBUTE_SETS = (
    TAGGERS
    + DEDUP
    + [
        step.name
        for step in (ParagraphDuplicates, NearDuplicates, Contamination, QualityScores)
    ]
)


wildcard_constraints:
    tagger="|".join(TAGGER_REGISTRY),
    method="|".join(DEDUP),
    shard=r"shard-\d+",


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
    conda:
        "../../envs/data.yaml"
    params:
        cfg=lambda w: (
            cfg_json("curate", w.tagger) if w.tagger in config["curate"] else "{}"
        ),
    shell:
        "lmforge tag --tagger {wildcards.tagger} --docs {input.docs} --out {output} "
        "--cfg {params.cfg:q} > {log} 2>&1"


rule dedup:
    input:
        code("dedup"),
        docs=docs("{source}"),
    output:
        [f"{R}/attributes/{{method}}/{{source}}/{s}.jsonl.gz" for s in SHARDS],
    log:
        f"{R}/logs/dedup/{{method}}/{{source}}.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "lmforge dedup --method {wildcards.method} --docs {input.docs} --out {output} > {log} 2>&1"


rule dedup_paragraphs:
    input:
        code("dedup-paragraphs"),
        docs=docs("{source}"),
    output:
        [f"{R}/attributes/dedup_para/{{source}}/{s}.jsonl.gz" for s in SHARDS],
    log:
        f"{R}/logs/dedup/dedup_para/{{source}}.log",
    benchmark:
        f"{R}/benchmarks/dedup/dedup_para/{{source}}.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        cfg=cfg_json("curate", "dedup", "paragraphs"),
    shell:
        "lmforge dedup-paragraphs --docs {input.docs} --out {output} --cfg {params.cfg:q} "
        "> {log} 2>&1"


rule minhash:
    input:
        code("minhash"),
        docs=f"{R}/documents/{{source}}/{{shard}}.jsonl.gz",
    output:
        f"{R}/dedup/minhash/{{source}}/{{shard}}.npz",
    log:
        f"{R}/logs/minhash/{{source}}/{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/minhash/{{source}}/{{shard}}.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        cfg=cfg_json("curate", "dedup", "minhash"),
    shell:
        "lmforge minhash --docs {input.docs} --out {output} --cfg {params.cfg:q} > {log} 2>&1"


rule dedup_minhash:
    input:
        code("dedup-minhash"),
        signatures=[f"{R}/dedup/minhash/{{source}}/{s}.npz" for s in SHARDS],
        docs=docs("{source}"),
    output:
        [f"{R}/attributes/dedup_minhash/{{source}}/{s}.jsonl.gz" for s in SHARDS],
    log:
        f"{R}/logs/dedup/dedup_minhash/{{source}}.log",
    conda:
        "../../envs/data.yaml"
    params:
        cfg=cfg_json("curate", "dedup", "minhash"),
    shell:
        "lmforge dedup-minhash --signatures {input.signatures} --docs {input.docs} "
        "--out {output} --cfg {params.cfg:q} > {log} 2>&1"


rule decontam:
    input:
        code("decontam"),
        docs=f"{R}/documents/{{source}}/{{shard}}.jsonl.gz",
        tasks=rules.make_tasks.output,
    output:
        f"{R}/attributes/decontam/{{source}}/{{shard}}.jsonl.gz",
    log:
        f"{R}/logs/decontam/{{source}}/{{shard}}.log",
    conda:
        "../../envs/data.yaml"
    params:
        cfg=cfg_json("curate", "decontam"),
        tasks_dir=lambda w, input: os.path.dirname(input.tasks[0]),
    shell:
        "lmforge decontam --docs {input.docs} --tasks-dir {params.tasks_dir} --out {output} "
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
