EVAL = config["evaluate"]


rule evaluate:
    input:
        code("evaluate", "model", "olmoe", "hf", "checkpoint", "tasks"),
        checkpoint=f"{R}/checkpoints/{{model}}",
        tasks=rules.make_tasks.output,
        tokens=f"{TOKENS}/valid.npy",
        tokenizer=f"{R}/tokenizer/{MIX}/tokenizer.json",
    output:
        f"{R}/eval/{{model}}/{{task}}.json",
    log:
        f"{R}/logs/evaluate/{{model}}/{{task}}.log",
    wildcard_constraints:
        model="|".join(["init", "pretrain", "init-grown", "grow", "sft"]),
        task="|".join(["heldout_ppl", "cloze_mc", "arith_gen"]),
    conda:
        "../../envs/eval.yaml"
    params:
        cfg=lambda w: json.dumps(
            {k: v for k, v in EVAL.items() if k not in ("models", "tasks")},
            sort_keys=True,
        ),
        tasks_dir=lambda w, input: os.path.dirname(input.tasks[0]),
        tokens_dir=lambda w, input: os.path.dirname(input.tokens),
    shell:
        "lmforge evaluate --checkpoint {input.checkpoint} --model-name {wildcards.model} "
        "--task {wildcards.task} --tasks-dir {params.tasks_dir} --tokens-dir {params.tokens_dir} "
        "--tokenizer {input.tokenizer} --cfg {params.cfg:q} --out {output} > {log} 2>&1"


rule eval_summary:
    input:
        code("evaluate"),
        results=[
            f"{R}/eval/{m}/{t}.json" for m in EVAL["models"] for t in EVAL["tasks"]
        ],
    output:
        md=report(
            f"{R}/eval/summary.md", caption="../report/eval.rst", category="Evaluation"
        ),
        json=f"{R}/eval/summary.json",
    log:
        f"{R}/logs/eval_summary.log",
    conda:
        "../../envs/eval.yaml"
    shell:
        "lmforge eval-summary --inputs {input.results} --out-md {output.md} "
        "--out-json {output.json} > {log} 2>&1"
