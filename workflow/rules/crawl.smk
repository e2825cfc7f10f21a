rule make_tasks:
    input:
        code("make-tasks"),
    output:
        cloze=f"{R}/tasks/cloze_mc.jsonl.gz",
        arith=f"{R}/tasks/arith_gen.jsonl.gz",
        reference=f"{R}/tasks/reference_docs.jsonl.gz",
    log:
        f"{R}/logs/make_tasks.log",
    priority: 1
    conda:
        "../../envs/data.yaml"
    params:
        cfg=cfg_json("tasks"),
        out_dir=lambda w, output: os.path.dirname(output.cloze),
    shell:
        "lmforge make-tasks --cfg {params.cfg:q} --out-dir {params.out_dir} > {log} 2>&1"


rule crawl_demo:
    input:
        code("crawl-demo"),
        tasks=rules.make_tasks.output,
    output:
        warcs=[
            f"{R}/crawl/demo/shard-{i:04d}.warc.gz"
            for i in range(config["crawl"]["demo"]["shards"])
        ],
        labels=f"{R}/crawl/demo/labels.jsonl.gz",
    log:
        f"{R}/logs/crawl_demo.log",
    priority: 1
    conda:
        "../../envs/data.yaml"
    params:
        cfg=cfg_json("crawl", "demo"),
        seed=SEED,
        out_dir=lambda w, output: os.path.dirname(output.labels),
        tasks_dir=lambda w, input: os.path.dirname(input.tasks[0]),
    shell:
        "lmforge crawl-demo --cfg {params.cfg:q} --seed {params.seed} "
        "--out-dir {params.out_dir} --tasks-dir {params.tasks_dir} > {log} 2>&1"


if config["crawl"]["source"] == "documents":

    # A released corpus: each file becomes a documents shard, no extraction.
    rule fetch_hub_dataset:
        input:
            code("fetch-hub-dataset"),
        output:
            f"{R}/hub/datasets/{{shard}}/{{name}}",
        log:
            f"{R}/logs/hub/datasets/{{shard}}/{{name}}.log",
        localrule: True  # the Hub is reached from the submit host, not the compute nodes
        conda:
            "../../envs/data.yaml"
        params:
            url=lambda w: HUB_DATASET_FILES[f"{R}/hub/datasets/{w.shard}/{w.name}"],
        shell:
            "lmforge fetch-hub-dataset --url {params.url} --out {output} > {log} 2>&1"

    rule import_documents:
        input:
            code("import-documents"),
            data=lambda w: SHARDS[w.shard],
        output:
            docs=f"{R}/documents/{{source}}/{{shard}}.jsonl.gz",
            report=f"{R}/documents/{{source}}/{{shard}}.import.json",
        log:
            f"{R}/logs/import/{{source}}/{{shard}}.log",
        benchmark:
            f"{R}/benchmarks/import/{{source}}/{{shard}}.tsv"
        priority: 1
        conda:
            "../../envs/data.yaml"
        params:
            cfg=(
                cfg_json("crawl", "document_fields")
                if "document_fields" in config["crawl"]
                else "{}"
            ),
        shell:
            "lmforge import-documents --input {input.data} --out {output.docs} "
            "--report {output.report} --source {wildcards.source} --cfg {params.cfg:q} "
            "> {log} 2>&1"

else:

    rule extract:
        input:
            code("extract"),
            warc=lambda w: SHARDS[w.shard],
        output:
            docs=f"{R}/documents/{{source}}/{{shard}}.jsonl.gz",
            report=f"{R}/documents/{{source}}/{{shard}}.extract.json",
        log:
            f"{R}/logs/extract/{{source}}/{{shard}}.log",
        benchmark:
            f"{R}/benchmarks/extract/{{source}}/{{shard}}.tsv"
        priority: 1
        conda:
            "../../envs/data.yaml"
        shell:
            "lmforge extract --warc {input.warc} --out {output.docs} --report {output.report} "
            "--source {wildcards.source} > {log} 2>&1"
