# lmforge: raw crawl -> curated corpus -> statistics -> tokens -> pretrained, grown and
# instruction-tuned models -> evaluation, and a vision-language branch (Molmo), every
# artifact a file under results/.
import os

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


validate(
    config, os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml")
)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/crawl.smk"
include: "workflow/rules/curate.smk"
include: "workflow/rules/stats.smk"
include: "workflow/rules/tokenize.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/vision.smk"


rule all:
    default_target: True
    input:
        final_targets(),
