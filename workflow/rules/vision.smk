# Molmo at toy scale: generated scenes in PixMo's formats -> caption pretraining of a ViT +
# connector + our LM -> fine-tuning on the sqrt(size) mixture; a text-only baseline on the same
# mixture; captions, VQA, pointing and counting on held-out scenes.


rule scenes:
    input:
        code("scenes"),
    output:
        directory(f"{R}/vision/scenes"),
    log:
        f"{R}/logs/scenes.log",
    priority: 1
    conda:
        "../../envs/train.yaml"
    params:
        cfg=cfg_json("vision", "scenes"),
        seed=SEED + 8,
    shell:
        "lmforge scenes --cfg {params.cfg:q} --seed {params.seed} --out-dir {output} "
        "> {log} 2>&1"


rule vlm:
    input:
        code("launch", "vlm"),
        checkpoint=lambda w: vlm_stage(w.stage)[0],
        scenes=f"{R}/vision/scenes",
        tokenizer=f"{R}/tokenizer/{MIX}/tokenizer.json",
    output:
        checkpoint=directory(checkpoint_path("vlm-{stage}")),
        metrics=f"{R}/train/vlm-{{stage}}/metrics.csv",
    log:
        f"{R}/logs/vlm-{{stage}}.log",
    benchmark:
        f"{R}/benchmarks/vlm-{{stage}}.tsv"
    wildcard_constraints:
        stage="caption|finetune|text_only",
    priority: 1
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        **launch_resources("vlm"),
    params:
        datasets=lambda w: vlm_stage(w.stage)[1],
        cfg=lambda w: vlm_stage(w.stage)[2],
        vision=cfg_json("vision", "encoder"),
        max_seq_len=VISION["max_seq_len"],
        seed=SEED + 9,
    shell:
        "lmforge launch --nodes {resources.nodes} --processes {resources.processes} -- "
        "lmforge vlm --stage {wildcards.stage} --checkpoint {input.checkpoint} "
        "--scenes {input.scenes} --datasets {params.datasets} --vision {params.vision:q} "
        "--max-seq-len {params.max_seq_len} --tokenizer {input.tokenizer} "
        "--cfg {params.cfg:q} --seed {params.seed} --out {output.checkpoint} "
        "--metrics {output.metrics} > {log} 2>&1"


rule vision_loss_plot:
    input:
        code("plot-loss"),
        metrics=expand(
            f"{R}/train/vlm-{{stage}}/metrics.csv",
            stage=["caption", "finetune", "text_only"],
        ),
    output:
        report(
            f"{R}/train/vision_loss.png",
            caption="../report/vision_loss.rst",
            category="Vision",
        ),
    log:
        f"{R}/logs/vision_loss_plot.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "lmforge plot-loss --metrics caption={input.metrics[0]} finetune={input.metrics[1]} "
        "text_only={input.metrics[2]} --out {output} > {log} 2>&1"


rule vlm_report:
    input:
        code("vlm-report"),
        vlm=checkpoint_path("vlm-finetune"),
        text_only=checkpoint_path("vlm-text_only"),
        scenes=f"{R}/vision/scenes",
        tokenizer=f"{R}/tokenizer/{MIX}/tokenizer.json",
    output:
        md=report(
            f"{R}/eval/vision.md", caption="../report/vision.rst", category="Vision"
        ),
        json=f"{R}/eval/vision.json",
        png=report(
            f"{R}/eval/vision_points.png",
            caption="../report/vision_points.rst",
            category="Vision",
        ),
    log:
        f"{R}/logs/vlm_report.log",
    conda:
        "../../envs/eval.yaml"
    params:
        cfg=lambda w: json.dumps(
            {"max_objects": VISION["scenes"]["max_objects"]}, sort_keys=True
        ),
    shell:
        "lmforge vlm-report --vlm {input.vlm} --text-only {input.text_only} "
        "--scenes {input.scenes} --tokenizer {input.tokenizer} --cfg {params.cfg:q} "
        "--out-md {output.md} --out-json {output.json} --out-png {output.png} > {log} 2>&1"
