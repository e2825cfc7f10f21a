rule stats_measure:
    input:
        code("stats-measure"),
        unpack(decontam_task_inputs),
        docs=lambda w: corpus_shard(w.corpus, w.shard),
        tokenizer=f"{R}/tokenizer/{MIX}/tokenizer.json",
    output:
        f"{R}/stats/{{corpus}}/measured/{{shard}}.parquet",
    log:
        f"{R}/logs/stats/{{corpus}}/{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/stats/{{corpus}}/{{shard}}.tsv"
    wildcard_constraints:
        corpus=r"(documents|mix)-[A-Za-z0-9_]+",
    conda:
        "../../envs/data.yaml"
    params:
        cfg=cfg_json("stats"),
        tasks=decontam_specs,
    shell:
        "lmforge stats-measure --docs {input.docs} --out {output} --cfg {params.cfg:q} "
        "--tokenizer {input.tokenizer} --tasks {params.tasks:q} > {log} 2>&1"


rule stats:
    input:
        code("stats"),
        unpack(decontam_task_inputs),
        docs=corpus_shards,
        measured=lambda w: [
            f"{R}/stats/{w.corpus}/measured/{s}.parquet" for s in SHARDS
        ],
        lang=[f"{R}/attributes/lang/{SOURCE}/{s}.jsonl.gz" for s in SHARDS],
    output:
        summary=report(
            f"{R}/stats/{{corpus}}/summary.md",
            caption="../report/stats.rst",
            category="Corpus statistics",
            subcategory="{corpus}",
        ),
        json=f"{R}/stats/{{corpus}}/summary.json",
        tables=[f"{R}/stats/{{corpus}}/{a}.parquet" for a in STATS_ANALYSES],
        plots=[
            report(
                f"{R}/stats/{{corpus}}/{plot}.png",
                caption=f"../report/stats_{plot}.rst",
                category="Corpus statistics",
                subcategory="{corpus}",
            )
            for plot in STATS_PLOTS
        ],
    log:
        f"{R}/logs/stats/{{corpus}}.log",
    benchmark:
        f"{R}/benchmarks/stats/{{corpus}}.tsv"
    wildcard_constraints:
        corpus=r"(documents|mix)-[A-Za-z0-9_]+",
    conda:
        "../../envs/data.yaml"
    threads: config["stats"]["duckdb"]["threads"]
    resources:
        mem_mb=STATS_MEM_MB,
    params:
        cfg=cfg_json("stats"),
        out_dir=lambda w, output: os.path.dirname(output.summary),
        tasks=decontam_specs,
    shell:
        "lmforge stats --docs {input.docs} --measured {input.measured} "
        "--out-dir {params.out_dir} --cfg {params.cfg:q} --tasks {params.tasks:q} "
        "--lang-attributes {input.lang} > {log} 2>&1"


rule overlap:
    input:
        code("overlap"),
        a=lambda w: corpus_shards(w, w.a),
        b=lambda w: corpus_shards(w, w.b),
    output:
        table=f"{R}/stats/overlap/{{a}}__{{b}}/overlap.parquet",
        md=report(
            f"{R}/stats/overlap/{{a}}__{{b}}/overlap.md",
            caption="../report/overlap.rst",
            category="Corpus statistics",
            subcategory="overlap",
        ),
    log:
        f"{R}/logs/overlap/{{a}}__{{b}}.log",
    wildcard_constraints:
        a=r"(documents|mix)-[A-Za-z0-9_]+",
        b=r"(documents|mix)-[A-Za-z0-9_]+",
    conda:
        "../../envs/data.yaml"
    params:
        cfg=cfg_json("stats"),
        out_dir=lambda w, output: os.path.dirname(output.md),
    shell:
        "lmforge overlap --docs {input.a} --b {input.b} --out-dir {params.out_dir} "
        "--cfg {params.cfg:q} > {log} 2>&1"
