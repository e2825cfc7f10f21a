# lmforge: raw crawl -> curated corpus -> statistics -> tokens -> pretrained, grown and
# instruction-tuned models -> evaluation, every artifact a file under results/.
from snakemake.utils import min_version, validate


min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/crawl.smk"
include: "workflow/rules/curate.smk"
include: "workflow/rules/stats.smk"
include: "workflow/rules/tokenize.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        final_targets(),
    default_target: True
