if START:

    rule hub_tokenizer:
        input:
            code("hub-tokenizer"),
            record=f"{R}/hub/models/start.json",
        output:
            tokenizer=f"{R}/tokenizer/{MIX}/tokenizer.json",
            config=f"{R}/tokenizer/{MIX}/tokenizer_config.json",
        log:
            f"{R}/logs/hub_tokenizer.log",
        conda:
            "../../envs/data.yaml"
        shell:
            "lmforge hub-tokenizer --record {input.record} --out {output.tokenizer} "
            "> {log} 2>&1"

else:

    rule train_tokenizer:
        input:
            code("train-tokenizer"),
            docs=mixed("{mix}"),
        output:
            tokenizer=f"{R}/tokenizer/{{mix}}/tokenizer.json",
            # transformers' tokenizer_config.json: special tokens and the Tulu chat template.
            config=f"{R}/tokenizer/{{mix}}/tokenizer_config.json",
        log:
            f"{R}/logs/train_tokenizer/{{mix}}.log",
        priority: 1
        conda:
            "../../envs/data.yaml"
        params:
            seed=SEED,
            vocab=config["tokenizer"]["vocab_size"],
            valid=config["tokenizer"]["valid_fraction"],
            sample=(
                f"--sample-bytes {config['tokenizer']['sample_bytes']}"
                if config["tokenizer"]["sample_bytes"]
                else ""
            ),
        shell:
            "lmforge train-tokenizer --docs {input.docs} --out {output.tokenizer} "
            "--seed {params.seed} --vocab-size {params.vocab} --valid-fraction {params.valid} "
            "{params.sample} > {log} 2>&1"


rule tokenize:
    input:
        code("tokenize"),
        docs=f"{R}/mixes/{{mix}}/{{shard}}",
        # One tokenizer (trained on tokenizer.mix) for every mix a model reads.
        tokenizer=f"{R}/tokenizer/{MIX}/tokenizer.json",
    output:
        train=f"{R}/tokens/{{mix}}/parts/{{shard}}.train.npy",
        valid=f"{R}/tokens/{{mix}}/parts/{{shard}}.valid.npy",
        meta=f"{R}/tokens/{{mix}}/parts/{{shard}}.json",
    log:
        f"{R}/logs/tokenize/{{mix}}/{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/tokenize/{{mix}}/{{shard}}.tsv"
    priority: 1
    conda:
        "../../envs/data.yaml"
    params:
        seed=SEED,
        valid=config["tokenizer"]["valid_fraction"],
        prefix=lambda w, output: output.meta.removesuffix(".json"),
    shell:
        "lmforge tokenize --docs {input.docs} --tokenizer {input.tokenizer} "
        "--out-prefix {params.prefix} --seed {params.seed} --valid-fraction {params.valid} "
        "> {log} 2>&1"


rule index_tokens:
    input:
        code("index-tokens"),
        shards=[f"{R}/tokens/{{mix}}/parts/{s}.json" for s in SHARDS],
    output:
        f"{R}/tokens/{{mix}}/meta.json",
    log:
        f"{R}/logs/tokenize/{{mix}}.log",
    priority: 1
    conda:
        "../../envs/data.yaml"
    shell:
        "lmforge index-tokens --shards {input.shards} --out {output} > {log} 2>&1"
