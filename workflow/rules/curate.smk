TAGGERS = config["curate"]["taggers"]
DEDUP = ["dedup_url", "dedup_exact"]


wildcard_constraints:
    tagger="|".join(["lang", "gopher", "pii"]),
    method="|".join(DEDUP),
    shard=r"shard-\d+",


rule tag:
    input:
        code("taggers", "pii"),
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


rule mix:
    input:
        code("mix", "pii"),
        docs=f"{R}/documents/{SOURCE}/{{shard}}.jsonl.gz",
        attributes=[
            f"{R}/attributes/{t}/{SOURCE}/{{shard}}.jsonl.gz" for t in TAGGERS + DEDUP
        ],
    output:
        docs=f"{R}/mixes/{{mix}}/{{shard}}.jsonl.gz",
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
        code("mix"),
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
