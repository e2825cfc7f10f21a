TOKENS = f"{R}/tokens/{MIX}"


rule init_model:
    input:
        code("init-model"),
        # From scratch: the model config for the tokenizer's vocabulary; after a Hub start,
        # the imported model's architecture.
        shape=(
            checkpoint_path("init") if START else f"{R}/tokenizer/{MIX}/tokenizer.json"
        ),
    output:
        directory(f"{R}/checkpoints/{{init}}"),
    log:
        f"{R}/logs/init_model/{{init}}.log",
    wildcard_constraints:
        init="init-grown" if START else "init|init-grown",
    priority: 1
    conda:
        "../../envs/train.yaml"
    params:
        cfg="" if START else f"--cfg {shlex.quote(cfg_json('model'))}",
        shape="--like" if START else "--tokenizer",
        seed=SEED,
        layers=lambda w: grown_factor(w.init, "depth"),
        width=lambda w: grown_factor(w.init, "width"),
    shell:
        "lmforge init-model {params.cfg} {params.shape} {input.shape} --seed {params.seed} "
        "--out {output} "
        "--layers-factor {params.layers} --width-factor {params.width} > {log} 2>&1"


if START:

    rule import_hub_model:
        input:
            code("import-hub-model"),
            record=f"{R}/hub/models/start.json",
        output:
            directory(checkpoint_path("init")),
        log:
            f"{R}/logs/import_hub_model.log",
        priority: 1
        conda:
            "../../envs/train.yaml"
        shell:
            "lmforge import-hub-model --record {input.record} --out {output} > {log} 2>&1"


rule pretrain:
    input:
        code("launch", "pretrain"),
        init=checkpoint_path("init"),
        tokens=token_files(MIX, "train"),
        meta=f"{TOKENS}/meta.json",
    output:
        checkpoint=directory(checkpoint_path("pretrain")),
        metrics=f"{R}/train/pretrain/metrics.csv",
    log:
        f"{R}/logs/pretrain.log",
    benchmark:
        f"{R}/benchmarks/pretrain.tsv"
    priority: 1
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        **launch_resources("pretrain"),
    params:
        cfg=json.dumps(pretrain_train_config(config), sort_keys=True),
        seed=SEED,
        tokens_dir=lambda w, input: os.path.dirname(input.meta),
    shell:
        "lmforge launch --nodes {resources.nodes} --processes {resources.processes} -- "
        "lmforge pretrain --init {input.init} --tokens-dir {params.tokens_dir} "
        "--cfg {params.cfg:q} --seed {params.seed} --out {output.checkpoint} "
        "--metrics {output.metrics} > {log} 2>&1"


rule grow:
    input:
        code("launch", "grow"),
        checkpoint=checkpoint_path("pretrain"),
        tokens=token_files(MIX, "train"),
        meta=f"{TOKENS}/meta.json",
    output:
        checkpoint=directory(checkpoint_path("grow")),
        metrics=f"{R}/train/grow/metrics.csv",
    log:
        f"{R}/logs/grow.log",
    benchmark:
        f"{R}/benchmarks/grow.tsv"
    priority: 1
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        **launch_resources("grow"),
    params:
        cfg=json.dumps(grow_train_config(config), sort_keys=True),
        seed=SEED + 1,
        operator=config["grow"]["operator"],
        factor=config["grow"]["factor"],
        width_noise=config["grow"]["width_noise"],
        tokens_dir=lambda w, input: os.path.dirname(input.meta),
    shell:
        "lmforge launch --nodes {resources.nodes} --processes {resources.processes} -- "
        "lmforge grow --checkpoint {input.checkpoint} --tokens-dir {params.tokens_dir} "
        "--operator {params.operator} --factor {params.factor} "
        "--width-noise {params.width_noise} --cfg {params.cfg:q} --seed {params.seed} "
        "--out {output.checkpoint} --metrics {output.metrics} > {log} 2>&1"


rule baseline:
    input:
        code("launch", "pretrain"),
        init=checkpoint_path("init-grown"),
        tokens=token_files(MIX, "train"),
        meta=f"{TOKENS}/meta.json",
    output:
        checkpoint=directory(checkpoint_path("baseline")),
        metrics=f"{R}/train/baseline/metrics.csv",
    log:
        f"{R}/logs/baseline.log",
    benchmark:
        f"{R}/benchmarks/baseline.tsv"
    priority: 1
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        **launch_resources("grow"),
    params:
        cfg=json.dumps(baseline_train_config(config), sort_keys=True),
        seed=SEED,
        tokens_dir=lambda w, input: os.path.dirname(input.meta),
    shell:
        "lmforge launch --nodes {resources.nodes} --processes {resources.processes} -- "
        "lmforge pretrain --job-name baseline --init {input.init} "
        "--tokens-dir {params.tokens_dir} --cfg {params.cfg:q} --seed {params.seed} "
        "--out {output.checkpoint} --metrics {output.metrics} > {log} 2>&1"


rule growth_report:
    input:
        code("growth-report"),
        small=f"{R}/train/pretrain/metrics.csv",
        grown=f"{R}/train/grow/metrics.csv",
        baseline=f"{R}/train/baseline/metrics.csv",
    output:
        md=report(
            f"{R}/train/growth.md", caption="../report/growth.rst", category="Training"
        ),
        json=f"{R}/train/growth.json",
        png=report(
            f"{R}/train/growth.png",
            caption="../report/growth.rst",
            category="Training",
        ),
    log:
        f"{R}/logs/growth_report.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "lmforge growth-report --small {input.small} --grown {input.grown} "
        "--baseline {input.baseline} --out-md {output.md} --out-json {output.json} "
        "--out-png {output.png} > {log} 2>&1"


rule anneal:
    input:
        code("launch", "pretrain"),
        init=checkpoint_path("pretrain"),
        tokens=lambda w: token_files(w.mix, "train"),
        meta=f"{R}/tokens/{{mix}}/meta.json",
    output:
        checkpoint=directory(checkpoint_path("anneal-{mix}-s{seed}")),
        metrics=f"{R}/train/anneal-{{mix}}-s{{seed}}/metrics.csv",
    log:
        f"{R}/logs/anneal/{{mix}}-s{{seed}}.log",
    wildcard_constraints:
        seed=r"\d+",
    priority: 1
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        **launch_resources("anneal"),
    params:
        cfg=cfg_json("midtrain", "train"),
        tokens_dir=lambda w, input: os.path.dirname(input.meta),
    shell:
        "lmforge launch --nodes {resources.nodes} --processes {resources.processes} -- "
        "lmforge pretrain --job-name anneal-{wildcards.mix}-s{wildcards.seed} "
        "--init {input.init} --tokens-dir {params.tokens_dir} --cfg {params.cfg:q} "
        "--seed {wildcards.seed} --out {output.checkpoint} --metrics {output.metrics} "
        "> {log} 2>&1"


rule soup:
    input:
        code("soup"),
        ingredients=[checkpoint_path(name) for name in ANNEALS],
    output:
        directory(checkpoint_path("soup-{mix}")),
    log:
        f"{R}/logs/soup/{{mix}}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "lmforge soup --checkpoints {input.ingredients} --out {output} > {log} 2>&1"


rule sft_data:
    input:
        code("sft-data"),
        mixes=mixed(),
    output:
        f"{R}/sft/data.jsonl.gz",
    log:
        f"{R}/logs/sft_data.log",
    # A training stage's data: made as soon as the mixes are, like the training jobs
    # (priority 1), so that the chain of stages starts as early as it can.
    priority: 1
    conda:
        "../../envs/train.yaml"
    params:
        cfg=lambda w: json.dumps(
            {k: v for k, v in config["sft"].items() if k not in ("from", "train")},
            sort_keys=True,
        ),
        tasks_cfg=cfg_json("tasks"),
        seed=SEED,
        valid=config["tokenizer"]["valid_fraction"],
    shell:
        "lmforge sft-data --mixes {input.mixes} --out {output} --cfg {params.cfg:q} "
        "--tasks-cfg {params.tasks_cfg:q} --seed {params.seed} --valid-fraction {params.valid} "
        "> {log} 2>&1"


rule sft:
    input:
        code("launch", "sft"),
        checkpoint=checkpoint_path(config["sft"]["from"]),
        data=f"{R}/sft/data.jsonl.gz",
        tokenizer=f"{R}/tokenizer/{MIX}/tokenizer.json",
    output:
        checkpoint=directory(checkpoint_path("sft")),
        metrics=f"{R}/train/sft/metrics.csv",
    log:
        f"{R}/logs/sft.log",
    benchmark:
        f"{R}/benchmarks/sft.tsv"
    priority: 1
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        **launch_resources("sft"),
    params:
        cfg=cfg_json("sft", "train"),
        seed=SEED + 2,
    shell:
        "lmforge launch --nodes {resources.nodes} --processes {resources.processes} -- "
        "lmforge sft --checkpoint {input.checkpoint} --data {input.data} "
        "--tokenizer {input.tokenizer} --cfg {params.cfg:q} --seed {params.seed} "
        "--out {output.checkpoint} --metrics {output.metrics} > {log} 2>&1"


rule instruct_data:
    input:
        code("instruct-data"),
        mixes=mixed(),
    output:
        **{name: f"{R}/instruct/{name}.jsonl.gz" for name in INSTRUCT_FILES},
    log:
        f"{R}/logs/instruct_data.log",
    priority: 1
    conda:
        "../../envs/train.yaml"
    params:
        cfg=cfg_json("instruct_data"),
        tasks_cfg=cfg_json("tasks"),
        seed=SEED,
        valid=config["tokenizer"]["valid_fraction"],
        out_dir=lambda w, output: os.path.dirname(output[0]),
    shell:
        "lmforge instruct-data --mixes {input.mixes} --out-dir {params.out_dir} "
        "--cfg {params.cfg:q} --tasks-cfg {params.tasks_cfg:q} --seed {params.seed} "
        "--valid-fraction {params.valid} > {log} 2>&1"


rule dpo:
    input:
        code("launch", "dpo"),
        checkpoint=checkpoint_path("sft"),
        train=instruct_file("dpo", "train"),
        valid=instruct_file("dpo", "valid"),
        tokenizer=f"{R}/tokenizer/{MIX}/tokenizer.json",
    output:
        checkpoint=directory(checkpoint_path("dpo")),
        metrics=f"{R}/train/dpo/metrics.csv",
    log:
        f"{R}/logs/dpo.log",
    benchmark:
        f"{R}/benchmarks/dpo.tsv"
    priority: 1
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        **launch_resources("dpo"),
    params:
        cfg=cfg_json("dpo", "train"),
        seed=SEED + 3,
    shell:
        "lmforge launch --nodes {resources.nodes} --processes {resources.processes} -- "
        "lmforge dpo --checkpoint {input.checkpoint} --train {input.train} "
        "--valid {input.valid} --tokenizer {input.tokenizer} --cfg {params.cfg:q} "
        "--seed {params.seed} --out {output.checkpoint} --metrics {output.metrics} "
        "> {log} 2>&1"


rule rlvr:
    input:
        code("launch", "rlvr"),
        checkpoint=checkpoint_path("dpo"),
        train=instruct_file("rlvr", "train"),
        valid=instruct_file("rlvr", "valid"),
        tokenizer=f"{R}/tokenizer/{MIX}/tokenizer.json",
    output:
        checkpoint=directory(checkpoint_path("rlvr")),
        metrics=f"{R}/train/rlvr/metrics.csv",
    log:
        f"{R}/logs/rlvr.log",
    benchmark:
        f"{R}/benchmarks/rlvr.tsv"
    priority: 1
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        **launch_resources("rlvr"),
    params:
        cfg=cfg_json("rlvr", "train"),
        seed=SEED + 4,
    shell:
        "lmforge launch --nodes {resources.nodes} --processes {resources.processes} -- "
        "lmforge rlvr --checkpoint {input.checkpoint} --train {input.train} "
        "--valid {input.valid} --tokenizer {input.tokenizer} --cfg {params.cfg:q} "
        "--seed {params.seed} --out {output.checkpoint} --metrics {output.metrics} "
        "> {log} 2>&1"


rule prompt_tasks:
    input:
        code("prompt-tasks"),
        mixes=mixed(),
    output:
        train=f"{R}/promptability/train.jsonl.gz",
        heldout=f"{R}/promptability/heldout.jsonl.gz",
    log:
        f"{R}/logs/prompt_tasks.log",
    priority: 1
    conda:
        "../../envs/train.yaml"
    params:
        cfg=cfg_json("promptability", "tasks"),
        seed=SEED + 5,
        valid=config["tokenizer"]["valid_fraction"],
        out_dir=lambda w, output: os.path.dirname(output.train),
    shell:
        "lmforge prompt-tasks --mixes {input.mixes} --out-dir {params.out_dir} "
        "--cfg {params.cfg:q} --seed {params.seed} --valid-fraction {params.valid} "
        "> {log} 2>&1"


rule promptable:
    input:
        code("launch", "promptable"),
        checkpoint=checkpoint_path(config["promptability"]["from"]),
        data=f"{R}/promptability/train.jsonl.gz",
        tokenizer=f"{R}/tokenizer/{MIX}/tokenizer.json",
    output:
        checkpoint=directory(checkpoint_path("promptable")),
        metrics=f"{R}/train/promptable/metrics.csv",
    log:
        f"{R}/logs/promptable.log",
    benchmark:
        f"{R}/benchmarks/promptable.tsv"
    priority: 1
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        **launch_resources("promptable"),
    params:
        cfg=cfg_json("promptability", "train"),
        prompt_tokens=config["promptability"]["prompt_tokens"],
        seed=SEED + 6,
    shell:
        "lmforge launch --nodes {resources.nodes} --processes {resources.processes} -- "
        "lmforge promptable --checkpoint {input.checkpoint} --data {input.data} "
        "--tokenizer {input.tokenizer} --cfg {params.cfg:q} --prompt-tokens {params.prompt_tokens} --seed {params.seed} "
        "--out {output.checkpoint} --metrics {output.metrics} > {log} 2>&1"


rule loss_plot:
    input:
        code("plot-loss"),
        pretrain=f"{R}/train/pretrain/metrics.csv",
        grow=f"{R}/train/grow/metrics.csv",
        sft=f"{R}/train/sft/metrics.csv",
        anneals=[f"{R}/train/{name}/metrics.csv" for name in ANNEALS + [CONTROL]],
    output:
        report(f"{R}/train/loss.png", caption="../report/loss.rst", category="Training"),
    log:
        f"{R}/logs/loss_plot.log",
    conda:
        "../../envs/train.yaml"
    params:
        anneals=lambda w, input: " ".join(
            f"{name}={path}" for name, path in zip(ANNEALS + [CONTROL], input.anneals)
        ),
    shell:
        "lmforge plot-loss --metrics pretrain={input.pretrain} grow={input.grow} "
        "sft={input.sft} {params.anneals} --out {output} > {log} 2>&1"
