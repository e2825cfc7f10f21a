rule heldout_docs:
    input:
        code("heldout-docs"),
        docs=mixed(MIX),
    output:
        f"{R}/eval/heldout/{MIX}.jsonl.gz",
    log:
        f"{R}/logs/heldout_docs.log",
    conda:
        "../../envs/eval.yaml"
    params:
        seed=SEED,
        valid=config["tokenizer"]["valid_fraction"],
        limit=EVAL["max_heldout_documents"],
    shell:
        "lmforge heldout-docs --docs {input.docs} --seed {params.seed} "
        "--valid-fraction {params.valid} --limit {params.limit} --out {output} > {log} 2>&1"


rule evaluate:
    input:
        code("evaluate"),
        unpack(task_inputs),
        checkpoint=f"{R}/checkpoints/{{model}}",
        tokenizer=f"{R}/tokenizer/{MIX}/tokenizer.json",
    output:
        f"{R}/eval/{{model}}/{{task}}.json",
    log:
        f"{R}/logs/evaluate/{{model}}/{{task}}.log",
    wildcard_constraints:
        model="|".join(
            [
                "init",
                "pretrain",
                "init-grown",
                "grow",
                "baseline",
                "sft",
                "dpo",
                "rlvr",
            ]
            + MIDTRAIN_MODELS
        ),
        task="|".join(TASK_SPECS),
    conda:
        "../../envs/eval.yaml"
    params:
        spec=staged_spec,
    shell:
        "lmforge evaluate --model {input.checkpoint} --model-name {wildcards.model} "
        "--tokenizer {input.tokenizer} --task {wildcards.task} --spec {params.spec:q} "
        "--out {output} > {log} 2>&1"


rule fetch_hub_model:
    input:
        code("fetch-hub-model"),
    output:
        f"{R}/hub/models/{{model}}.json",
    log:
        f"{R}/logs/hub/{{model}}.log",
    wildcard_constraints:
        model=one_of(HUB_REFS),
    localrule: True  # the Hub is reached from the submit host, not the compute nodes
    conda:
        "../../envs/eval.yaml"
    params:
        ref=lambda w: HUB_REFS[w.model],
    shell:
        "lmforge fetch-hub-model --ref {params.ref} --out {output} > {log} 2>&1"


rule evaluate_hub:
    input:
        code("evaluate"),
        unpack(task_inputs),
        model=f"{R}/hub/models/{{model}}.json",
    output:
        f"{R}/eval/{{model}}/{{task}}.json",
    log:
        f"{R}/logs/evaluate/{{model}}/{{task}}.log",
    wildcard_constraints:
        model=one_of(HUB_MODELS),
        task=one_of(HUB_TASKS),
    conda:
        "../../envs/eval.yaml"
    params:
        spec=staged_spec,
    shell:
        "lmforge evaluate --model {input.model} --model-name {wildcards.model} "
        "--task {wildcards.task} --spec {params.spec:q} --out {output} > {log} 2>&1"


rule publish:
    input:
        code("publish"),
        unpack(publish_inputs),
    output:
        f"{R}/publish/{{model}}.json",
    log:
        f"{R}/logs/publish/{{model}}.log",
    wildcard_constraints:
        model=one_of(MODEL_STAGES),
    localrule: True
    conda:
        "../../envs/eval.yaml"
    params:
        repo=PUBLISH["repo"],
        revision=PUBLISH["revision"],
        start=f"--start {R}/hub/models/start.json" if START else "",
    shell:
        "lmforge publish --checkpoint {input.checkpoint} --tokenizer {input.tokenizer} "
        "--repo {params.repo} --revision {params.revision} --metrics {input.metrics} "
        "--funnel {input.funnel} --evaluation {input.evaluation} {params.start} "
        "--out {output} > {log} 2>&1"


rule eval_summary:
    input:
        code("eval-summary"),
        results=[f"{R}/eval/{m}/{t}.json" for m in EVAL_MODELS for t in EVAL["tasks"]]
        + [f"{R}/eval/{m}/{t}.json" for m in HUB_MODELS for t in HUB_TASKS]
        + [
            f"{R}/eval/{m}/{t}.json"
            for m in MIDTRAIN_MODELS
            for t in MIDTRAIN["tasks"]
        ],
        contamination=f"{R}/stats/mix-{MIX}/contamination.parquet",
    output:
        md=report(
            f"{R}/eval/summary.md", caption="../report/eval.rst", category="Evaluation"
        ),
        parquet=f"{R}/eval/summary.parquet",
        json=f"{R}/eval/summary.json",
    log:
        f"{R}/logs/eval_summary.log",
    conda:
        "../../envs/eval.yaml"
    shell:
        "lmforge eval-summary --inputs {input.results} "
        "--contamination {input.contamination} --out-md {output.md} "
        "--out-parquet {output.parquet} --out-json {output.json} > {log} 2>&1"


rule midtrain_report:
    input:
        code("midtrain-report"),
        results=[
            f"{R}/eval/{m}/{t}.json"
            for m in ["pretrain"] + MIDTRAIN_MODELS
            for t in MIDTRAIN["tasks"]
        ],
    output:
        md=report(
            f"{R}/eval/midtrain.md",
            caption="../report/midtrain.rst",
            category="Evaluation",
        ),
        json=f"{R}/eval/midtrain.json",
    log:
        f"{R}/logs/midtrain_report.log",
    conda:
        "../../envs/eval.yaml"
    params:
        anneals=" ".join(ANNEALS),
        soup=f"soup-{MIDTRAIN['mix']}",
        control=CONTROL,
    shell:
        "lmforge midtrain-report --inputs {input.results} --start pretrain "
        "--anneals {params.anneals} --soup {params.soup} --control {params.control} "
        "--out-md {output.md} --out-json {output.json} > {log} 2>&1"


rule posttrain_report:
    input:
        code("posttrain-report"),
        sft=checkpoint_path("sft"),
        dpo=checkpoint_path("dpo"),
        rlvr=checkpoint_path("rlvr"),
        tokenizer=f"{R}/tokenizer/{MIX}/tokenizer.json",
        rlvr_valid=instruct_file("rlvr", "valid"),
        preference_valid=instruct_file("dpo", "valid"),
    output:
        md=report(
            f"{R}/eval/posttrain.md",
            caption="../report/posttrain.rst",
            category="Evaluation",
        ),
        json=f"{R}/eval/posttrain.json",
    log:
        f"{R}/logs/posttrain_report.log",
    conda:
        "../../envs/eval.yaml"
    params:
        cfg=lambda w: json.dumps(
            {
                "max_new_tokens": config["rlvr"]["train"]["max_new_tokens"],
                "beta": config["dpo"]["train"]["beta"],
            }
        ),
    shell:
        "lmforge posttrain-report --models sft={input.sft} dpo={input.dpo} "
        "rlvr={input.rlvr} --baseline sft --tokenizer {input.tokenizer} "
        "--rlvr-valid {input.rlvr_valid} --preference-valid {input.preference_valid} "
        "--cfg {params.cfg:q} --out-md {output.md} --out-json {output.json} > {log} 2>&1"


rule promptability_report:
    input:
        code("promptability-report"),
        base=checkpoint_path(config["promptability"]["from"]),
        treated=checkpoint_path("promptable"),
        heldout=f"{R}/promptability/heldout.jsonl.gz",
        tokenizer=f"{R}/tokenizer/{MIX}/tokenizer.json",
    output:
        md=report(
            f"{R}/eval/promptability.md",
            caption="../report/promptability.rst",
            category="Evaluation",
        ),
        json=f"{R}/eval/promptability.json",
    log:
        f"{R}/logs/promptability_report.log",
    conda:
        "../../envs/eval.yaml"
    params:
        cfg=lambda w: json.dumps(
            {
                k: v
                for k, v in config["promptability"].items()
                if k not in ("train", "tasks", "from")
            },
            sort_keys=True,
        ),
        base=config["promptability"]["from"],
        seed=SEED + 7,
    shell:
        "lmforge promptability-report --base {input.base} --base-name {params.base} "
        "--treated {input.treated} --treated-name promptable --tokenizer {input.tokenizer} "
        "--heldout {input.heldout} --cfg {params.cfg:q} --seed {params.seed} "
        "--out-md {output.md} --out-json {output.json} > {log} 2>&1"
