"""`lmforge <command>`: one subcommand per workflow step, each declared in its stage's module.

This table is all the CLI knows: a command's arguments, work and tracking live with the
command (see lmforge.runner). Only the named module is imported, so a rule's code is the
import graph of that module (lmforge.codegraph), not of every stage.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    # data
    "make-tasks": "lmforge.eval.generated",
    "crawl-demo": "lmforge.data.democrawl",
    "extract": "lmforge.data.extract",
    "import-documents": "lmforge.data.documents",
    "tag": "lmforge.data.tag",
    "dedup-keys": "lmforge.data.dedup",
    "dedup-bucket": "lmforge.data.dedup",
    "dedup": "lmforge.data.dedup",
    "minhash": "lmforge.data.minhash",
    "minhash-bucket": "lmforge.data.minhash",
    "minhash-clusters": "lmforge.data.minhash",
    "dedup-minhash": "lmforge.data.minhash",
    "decontam": "lmforge.data.decontam",
    "train-quality": "lmforge.data.quality",
    "tag-quality": "lmforge.data.quality",
    "label-eval": "lmforge.data.labeleval",
    "mix": "lmforge.data.mix",
    "funnel": "lmforge.data.mix",
    "train-tokenizer": "lmforge.data.tokenize",
    "tokenize": "lmforge.data.tokenize",
    "index-tokens": "lmforge.data.tokenize",
    "heldout-docs": "lmforge.data.tokenize",
    # statistics
    "stats-measure": "lmforge.stats.analyses",
    "stats": "lmforge.stats.analyses",
    "overlap": "lmforge.stats.overlap",
    "search": "lmforge.stats.search",
    # training
    "warmup": "lmforge.train.pretrain",
    "init-model": "lmforge.train.pretrain",
    "pretrain": "lmforge.train.pretrain",
    "plot-loss": "lmforge.train.pretrain",
    "grow": "lmforge.train.grow",
    "soup": "lmforge.model.checkpoint",
    "growth-report": "lmforge.train.growth_report",
    "midtrain-report": "lmforge.train.midtrain_report",
    "launch": "lmforge.train.launch",
    "plan": "lmforge.train.plan",
    "plan-data": "lmforge.data.plan",
    "export-hf": "lmforge.model.hf",
    "fetch-hub-model": "lmforge.io.hub",
    "import-hub-model": "lmforge.io.hub",
    "hub-tokenizer": "lmforge.io.hub",
    "fetch-hub-dataset": "lmforge.io.hub",
    "publish": "lmforge.io.hub",
    # post-training
    "sft-data": "lmforge.posttrain.sft",
    "sft": "lmforge.posttrain.sft",
    "instruct-data": "lmforge.posttrain.instruct",
    "dpo": "lmforge.posttrain.dpo",
    "rlvr": "lmforge.posttrain.rlvr",
    "posttrain-report": "lmforge.posttrain.report",
    "prompt-tasks": "lmforge.posttrain.promptability",
    "promptable": "lmforge.posttrain.promptability",
    "promptability-report": "lmforge.posttrain.promptability",
    # evaluation
    "evaluate": "lmforge.eval.evaluate",
    "eval-summary": "lmforge.eval.evaluate",
    "evaluate-matrix": "lmforge.eval.evaluate",
    "effects": "lmforge.eval.effects",
    # vision
    "scenes": "lmforge.vision.pixmo",
    "vlm": "lmforge.vision.train",
    "vlm-report": "lmforge.vision.evaluate",
    # provenance
    "lineage": "lmforge.io.lineage",
    "sync-runs": "lmforge.io.tracking",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        parser = argparse.ArgumentParser(prog="lmforge", description=__doc__.split("\n")[0])
        parser.add_argument("command", choices=sorted(COMMANDS),
                            help="`lmforge COMMAND --help` describes one")
        parser.parse_args(argv[:1])
    importlib.import_module(COMMANDS[argv[0]])
    from lmforge import runner

    return runner.main(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
