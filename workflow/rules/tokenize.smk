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
    conda:
        "../../envs/data.yaml"
    params:
        seed=SEED,
        vocab=config["tokenizer"]["vocab_size"],
        valid=config["tokenizer"]["valid_fraction"],
    shell:
        "lmforge train-tokenizer --docs {input.docs} --out {output.tokenizer} "
        "--seed {params.seed} "
        "--vocab-size {params.vocab} --valid-fraction {params.valid} > {log} 2>&1"


rule tokenize:
    input:
        code("tokenize"),
        docs=mixed("{mix}"),
        # One tokenizer (trained on tokenizer.mix) for every mix a model reads.
        tokenizer=f"{R}/tokenizer/{MIX}/tokenizer.json",
    output:
        train=f"{R}/tokens/{{mix}}/train.npy",
        valid=f"{R}/tokens/{{mix}}/valid.npy",
        meta=f"{R}/tokens/{{mix}}/meta.json",
    log:
        f"{R}/logs/tokenize/{{mix}}.log",
    benchmark:
        f"{R}/benchmarks/tokenize/{{mix}}.tsv"
    conda:
        "../../envs/data.yaml"
    params:
        seed=SEED,
        valid=config["tokenizer"]["valid_fraction"],
        out_dir=lambda w, output: os.path.dirname(output.meta),
    shell:
        "lmforge tokenize --docs {input.docs} --tokenizer {input.tokenizer} "
        "--out-dir {params.out_dir} --seed {params.seed} --valid-fraction {params.valid} "
        "> {log} 2>&1"
