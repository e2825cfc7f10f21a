rule stats:
    input:
        code("stats"),
        docs=corpus_shards,
    output:
        summary=report(
            f"{R}/stats/{{corpus}}/summary.md",
            caption="../report/stats.rst",
            category="Corpus statistics",
            subcategory="{corpus}",
        ),
        tables=[
            f"{R}/stats/{{corpus}}/{a}.parquet"
            for a in (
                "summary",
                "length_histogram",
                "domains",
                "duplicate_texts",
                "duplicate_urls",
            )
        ],
        lengths=report(
            f"{R}/stats/{{corpus}}/length_histogram.png",
            caption="../report/lengths.rst",
            category="Corpus statistics",
            subcategory="{corpus}",
        ),
        domains=report(
            f"{R}/stats/{{corpus}}/domains.png",
            caption="../report/domains.rst",
            category="Corpus statistics",
            subcategory="{corpus}",
        ),
    log:
        f"{R}/logs/stats/{{corpus}}.log",
    benchmark:
        f"{R}/benchmarks/stats/{{corpus}}.tsv"
    wildcard_constraints:
        corpus=r"(documents|mix)-[A-Za-z0-9_]+",
    conda:
        "../../envs/data.yaml"
    threads: 2
    params:
        cfg=cfg_json("stats"),
        out_dir=lambda w, output: os.path.dirname(output.summary),
    shell:
        "lmforge stats --docs {input.docs} --out-dir {params.out_dir} --cfg {params.cfg:q} "
        "> {log} 2>&1"
