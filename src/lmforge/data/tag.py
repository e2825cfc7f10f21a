"""`lmforge tag`: one registered tagger over one documents shard."""

from __future__ import annotations

from pathlib import Path

from lmforge.data.attributes import run_step
from lmforge.data.taggers import TAGGERS
from lmforge.runner import CFG, OUT, arg, command


def run_tagger(name: str, docs_path: str | Path, out_path: str | Path, cfg: dict) -> dict:
    if name not in TAGGERS:
        raise KeyError(f"unknown tagger {name!r}; registered: {sorted(TAGGERS)}")
    return run_step(TAGGERS[name](cfg), [docs_path], [out_path])


@command("tag", arg("--tagger"), arg("--docs"), OUT, CFG,
         job=lambda args: f"tag/{args.tagger}/{Path(args.out).name}",
         params=lambda args: {"tagger": args.tagger, **args.cfg},
         inputs=("docs",), outputs=("out",))
def tag_command(args, job) -> dict:
    """One tagger's attributes of one documents shard."""
    return run_tagger(args.tagger, args.docs, args.out, args.cfg)
