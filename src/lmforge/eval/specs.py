"""Task specifications: what a task is (kind, format, data, metric), checked when the workflow
loads, and the workflow's own tasks. No model code here, so the Snakefile reads it quickly."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.io.storage import InputError


@dataclass
class TaskSpec:
    """One task of an evaluation matrix: `kind` choice | generate | perplexity, `format` one of
    the readers above, `path` its local data."""

    name: str
    kind: str
    format: str
    path: str
    formulation: str = "rc"
    primary_metric: str | None = None
    num_shots: int = 0
    shots_path: str | None = None
    seed: int = 1234
    limit: int | None = None
    stop: list[str] = field(default_factory=lambda: ["\n\n", "Question:"])
    max_new_tokens: int = 256
    domain_field: str = "source"

    @classmethod
    def from_config(cls, name: str, values: dict) -> TaskSpec:
        try:
            spec = cls(name=name, **values)
        except TypeError as err:
            raise InputError(f"task {name!r}: {err}") from None
        if spec.kind not in KINDS:
            raise InputError(f"task {name!r}: unknown kind {spec.kind!r}")
        if spec.formulation not in ("rc", "mc"):
            raise InputError(f"task {name!r}: formulation must be rc or mc")
        if spec.num_shots and not spec.shots_path:
            raise InputError(f"task {name!r}: num_shots needs shots_path (another split, so "
                             "that no shot is a test instance)")
        return spec


DEFAULT_PRIMARY = {"choice": "acc_per_char", "generate": "exact_match",
                   "perplexity": "bits_per_byte", "token_perplexity": "perplexity"}


KINDS = tuple(DEFAULT_PRIMARY)


def builtin_task_specs(eval_cfg: dict, tasks_dir: str, tokens_dir: str, heldout_docs: str
                       ) -> dict[str, dict]:
    """The workflow's own tasks, over its generated files."""
    return {
        "heldout_ppl": {"kind": "token_perplexity", "format": "memmap", "path": tokens_dir,
                        "limit": eval_cfg["max_ppl_tokens"]},
        "heldout_domains": {"kind": "perplexity", "format": "documents", "path": heldout_docs,
                            "domain_field": "url_host"},
        "reference_bpb": {"kind": "perplexity", "format": "documents",
                          "path": f"{tasks_dir}/reference_docs.jsonl.gz", "domain_field": "source"},
        "cloze_mc": {"kind": "choice", "format": "lmforge_cloze",
                     "path": f"{tasks_dir}/cloze_mc.jsonl.gz"},
        "arith_gen": {"kind": "generate", "format": "lmforge_arith",
                      "path": f"{tasks_dir}/arith_gen.jsonl.gz", "stop": ["\n"],
                      "max_new_tokens": eval_cfg["max_new_tokens"]},
    }


def workflow_task_specs(eval_cfg: dict, tasks_dir: str, tokens_dir: str, heldout_docs: str
                        ) -> dict[str, dict]:
    """The spec of every task in `evaluate.tasks`: the workflow's own (over its generated
    files) or one of `evaluate.extra_tasks` (local files in a benchmark's format)."""
    builtin = builtin_task_specs(eval_cfg, tasks_dir, tokens_dir, heldout_docs)
    extra = eval_cfg.get("extra_tasks", {})
    clash = sorted(set(extra) & set(builtin))
    if clash:
        raise InputError(f"evaluate.extra_tasks redefines the workflow's tasks {clash}")
    specs = {}
    for name in eval_cfg["tasks"]:
        if name not in builtin and name not in extra:
            raise InputError(f"evaluate.tasks names {name!r}, which is neither a workflow task "
                             f"{list(builtin)} nor in evaluate.extra_tasks")
        specs[name] = builtin.get(name) or extra[name]
        TaskSpec.from_config(name, specs[name])  # checked before any job runs
    return specs


# Measured on held-out splits of the corpus itself: held out by construction, nothing to
# remove from it.
HELD_OUT_SPLITS = ("heldout_ppl", "heldout_domains")


def decontamination_specs(eval_cfg: dict, tasks_dir: str) -> dict[str, dict]:
    """The tasks the training data is cleaned against: every task the workflow generates and
    every task of `evaluate.extra_tasks`, evaluated now or not (asking for one later must not
    find it trained on), but those measured on the corpus's own held-out split."""
    builtin = builtin_task_specs(eval_cfg, tasks_dir, "unused", "unused")
    specs = {**builtin, **eval_cfg.get("extra_tasks", {})}
    for name, spec in specs.items():
        TaskSpec.from_config(name, spec)
    return {name: spec for name, spec in sorted(specs.items())
            if name not in HELD_OUT_SPLITS and spec["kind"] != "token_perplexity"}
