"""The Hugging Face Hub in and out, through `huggingface_hub` (which honours `HF_ENDPOINT`,
`HF_HUB_OFFLINE`, `HF_TOKEN` and the standard cache as it documents):

- `fetch_model`: a model pinned to a revision, `hf:<repo>@<revision>`, downloaded with
  `snapshot_download` (only the files a causal LM needs) into the standard cache; the record
  names the commit the revision resolved to, so a result says exactly which weights it scored.
- `publish`: a checkpoint exported in Hugging Face format with its tokenizer and chat template,
  a model card built from the run's own records, uploaded with `upload_folder`.
- `dataset_files` / `fetch_dataset_file`: released corpora as `hf://datasets/<repo>@<revision>/
  <glob>`, listed with `HfFileSystem` and downloaded file by file.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lmforge.io.storage import InputError, atomic_dir, atomic_path, read_json, write_json
from lmforge.runner import CHECKPOINT, OUT, TOKENIZER, arg, command

log = logging.getLogger(__name__)

# What evaluating or continuing a causal LM needs; not the other formats a repo may carry
# (PyTorch pickles, ONNX, GGUF, Flax).
MODEL_FILES = ["config.json", "generation_config.json", "*.safetensors",
               "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja"]
_MODEL_REF = re.compile(r"^hf:(?P<repo>[\w.-]+/[\w.-]+)@(?P<revision>[\w./-]+)$")
_DATASET_URL = re.compile(
    r"^hf://datasets/(?P<repo>[\w.-]+/[\w.-]+)@(?P<revision>[\w.-]+)/(?P<pattern>.+)$")


HUB_RECORD_KEYS = {"ref", "repo", "revision", "commit", "path", "files"}


@dataclass(frozen=True)
class HubModel:
    repo: str
    revision: str

    @classmethod
    def parse(cls, ref: str) -> HubModel:
        match = _MODEL_REF.match(ref)
        if match is None:
            raise InputError(f"{ref!r}: a Hub model is `hf:<org>/<name>@<revision>` (a commit, "
                             "tag or branch; pinned, so a result names the weights it scored)")
        return cls(match["repo"], match["revision"])


def is_hub_model(ref: str) -> bool:
    return ref.startswith("hf:")


def _hub_error(what: str, err: Exception) -> InputError:
    return InputError(f"{what}: {type(err).__name__}: {str(err).splitlines()[0]}")


def fetch_model(ref: str) -> dict:
    """Download a pinned Hub model into the standard cache: {repo, revision, commit, path,
    files}."""
    from huggingface_hub import snapshot_download

    model = HubModel.parse(ref)
    try:
        path = Path(snapshot_download(model.repo, revision=model.revision,
                                      allow_patterns=MODEL_FILES))
    except OSError as err:  # the client's HTTP, not-found and offline errors
        raise _hub_error(ref, err) from None
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    if "config.json" not in files or not any(f.endswith(".safetensors") for f in files):
        raise InputError(f"{ref}: no config.json and safetensors weights at that revision "
                         f"(found {files})")
    # The snapshot folder is named by the commit the revision resolved to.
    return {"ref": ref, "repo": model.repo, "revision": model.revision, "commit": path.name,
            "path": str(path), "files": files}


def model_card(name: str, facts: dict) -> str:
    """A Hub model card (YAML front matter + Markdown) from what the run recorded."""
    arch = facts["architecture"]
    lines = ["---", "library_name: transformers", "license: apache-2.0",
             f"tags: [lmforge, {arch['model_type']}]", "---", "", f"# {name}", "",
             "Trained with [lmforge](https://github.com/) from raw crawl to checkpoint; every "
             "artifact below is a target of one Snakemake workflow.", "", "## Architecture", "",
             "| | |", "| --- | --- |"]
    lines += [f"| {key} | {value:,} |" if isinstance(value, int) else f"| {key} | {value} |"
              for key, value in arch.items()]
    lines += ["", "## Training", ""]
    if facts.get("start"):
        start = facts["start"]
        lines += [f"- started from: [{start['repo']}](https://huggingface.co/{start['repo']}) "
                  f"at commit `{start['commit']}` (its own training is in its card)"]
    lines += [f"- tokens seen{' since' if facts.get('start') else ''}: "
              f"{facts['tokens_seen']:,}",
              f"- config hash: `{facts['config_hash']}`", f"- git commit: `{facts['git_commit']}`"]
    if facts.get("funnel"):
        lines += ["", "## Data: the mix and its funnel", "", facts["funnel"].strip()]
    if facts.get("evaluation"):
        lines += ["", "## Evaluation", "", facts["evaluation"].strip()]
    lines += ["", "## Lineage", ""]
    if facts.get("lineage"):
        lines += ["The runs and content hashes that produced these weights, back to the crawl "
                  "(`lmforge lineage`):", "", "```", *facts["lineage"], "```"]
    else:
        lines += ["Not in the tracking store: the checkpoint was made outside the workflow "
                  "or changed since."]
    return "\n".join(lines) + "\n"


def architecture(model) -> dict:
    from lmforge.model.hf import hf_config

    config = hf_config(model.cfg)
    keep = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "vocab_size", "max_position_embeddings", "num_experts",
            "num_experts_per_tok")
    return {"model_type": config["model_type"],
            **{k: config[k] for k in keep[1:] if k in config},
            "parameters": sum(p.numel() for p in model.parameters())}


def publish(checkpoint, tokenizer, repo: str, revision: str, facts: dict,
            message: str) -> dict:
    """Export, write the card and upload to `repo` at branch `revision` (made if new):
    {repo, revision, commit, files}."""
    from huggingface_hub import HfApi

    from lmforge.model.checkpoint import load_model
    from lmforge.model.hf import export_hf

    model = load_model(checkpoint)
    facts = {**facts, "architecture": architecture(model)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        export_hf(model, folder, tokenizer=tokenizer)
        (folder / "README.md").write_text(model_card(repo.split("/")[-1], facts))
        files = sorted(p.name for p in folder.iterdir())
        api = HfApi()
        try:
            api.create_repo(repo, exist_ok=True)
            if revision != "main":  # upload_folder does not make branches
                api.create_branch(repo, branch=revision, exist_ok=True)
            commit = api.upload_folder(repo_id=repo, folder_path=folder, revision=revision,
                                       commit_message=message)
        except OSError as err:
            raise _hub_error(f"publishing to {repo}@{revision}", err) from None
    return {"repo": repo, "revision": revision, "commit": commit.oid,
            "url": commit.commit_url, "files": files}


def dataset_files(url: str) -> list[str]:
    """The files of a Hub dataset a `hf://datasets/<repo>@<revision>/<glob>` names, as
    `hf://` URLs pinned to the commit the revision resolves to, sorted."""
    from huggingface_hub import HfApi

    match = _DATASET_URL.match(url)
    if match is None:
        raise InputError(f"{url!r}: a Hub dataset input is "
                         "`hf://datasets/<org>/<name>@<revision>/<glob>`")
    api = HfApi()
    try:
        info = api.dataset_info(match["repo"], revision=match["revision"])
        names = api.list_repo_files(match["repo"], repo_type="dataset", revision=info.sha)
    except OSError as err:
        raise _hub_error(url, err) from None
    found = sorted(n for n in names if fnmatch.fnmatchcase(n, match["pattern"]))
    if not found:
        raise InputError(f"{url}: matches no file of the dataset at {info.sha}")
    return [f"hf://datasets/{match['repo']}@{info.sha}/{name}" for name in found]


def fetch_dataset_file(url: str, out) -> dict:
    """One dataset file into the standard cache, then copied to `out` atomically."""
    import shutil

    from huggingface_hub import hf_hub_download

    match = _DATASET_URL.match(url)
    if match is None:
        raise InputError(f"{url!r}: not `hf://datasets/<org>/<name>@<revision>/<file>`")
    try:
        cached = hf_hub_download(match["repo"], match["pattern"], repo_type="dataset",
                                 revision=match["revision"])
    except OSError as err:
        raise _hub_error(url, err) from None
    with atomic_path(out) as tmp:
        shutil.copyfile(cached, tmp)
    return {"url": url, "bytes": Path(out).stat().st_size}


@command("fetch-hub-model", arg("--ref", help="hf:<org>/<name>@<revision>"), OUT,
         job=lambda args: f"fetch_hub_model/{Path(args.out).stem}", outputs=("out",))
def fetch_hub_model_command(args, job) -> None:
    """Download a pinned Hub model into the Hugging Face cache; write its record (the commit
    the revision resolved to, the snapshot's path and files)."""
    record = fetch_model(args.ref)
    job.set_tags({"hub.repo": record["repo"], "hub.revision": record["revision"],
                  "hub.commit": record["commit"]})
    write_json(args.out, record)
    log.info("%s is commit %s at %s", args.ref, record["commit"], record["path"])


def _snapshot(record_path) -> tuple[dict, Path]:
    record = read_json(record_path)
    path = Path(record["path"])
    if not (path / "config.json").is_file():
        raise InputError(f"{record_path}: the snapshot {path} is gone from the Hugging Face "
                         "cache; fetch the model again (delete the record)")
    return record, path


@command("import-hub-model", arg("--record", help="fetch-hub-model's record"), OUT,
         job=lambda args: f"import_hub_model/{Path(args.out).name}",
         params=lambda args: {"ref": read_json(args.record)["ref"]}, inputs=("record",),
         outputs=("out",))
def import_hub_model_command(args, job) -> dict:
    """A fetched Hub OLMo 2 / OLMoE model as an lmforge checkpoint (the weights unchanged, so
    its logits are the `transformers` model's), to train on from there."""
    from lmforge.model.checkpoint import load_model, save_model

    record, path = _snapshot(args.record)
    model = load_model(path)
    with atomic_dir(args.out) as tmp:
        save_model(model, tmp)
    job.set_tags({"hub.repo": record["repo"], "hub.revision": record["revision"],
                  "hub.commit": record["commit"]})
    return {"params": model.num_params(non_embedding=False)}


@command("hub-tokenizer", arg("--record", help="fetch-hub-model's record"), OUT,
         job="hub_tokenizer", params=lambda args: {"ref": read_json(args.record)["ref"]},
         inputs=("record",), outputs=("out",))
def hub_tokenizer_command(args, job) -> dict:
    """A fetched Hub model's tokenizer as the workflow's (its ids are the ones its embeddings
    learned), with the chat tokens lmforge needs added into its spare embedding rows."""
    from lmforge.data.tokenize import adopt_tokenizer
    from lmforge.model.checkpoint import read_architecture

    _, path = _snapshot(args.record)
    if not (path / "tokenizer.json").is_file():
        raise InputError(f"{read_json(args.record)['ref']}: the repo has no tokenizer.json "
                         "(a fast tokenizer); lmforge tokenizes with the `tokenizers` library")
    rows = read_architecture(path)[1]["vocab_size"]
    adopted = adopt_tokenizer(path / "tokenizer.json", args.out, rows)
    log.info("added %s to the Hub tokenizer", adopted["added_tokens"] or "nothing")
    return {"vocab_size": adopted["vocab_size"], "added_tokens": len(adopted["added_tokens"])}


def tokens_seen(metrics_paths: list) -> int:
    """Tokens a checkpoint was trained on: the last `tokens` of each stage it went through."""
    from lmforge.train.metrics import read_metrics

    return sum(int(read_metrics(path)["tokens"][-1]) for path in metrics_paths)


@command("publish", CHECKPOINT, TOKENIZER, arg("--repo"), arg("--revision", default="main"),
         arg("--metrics", nargs="+", help="metrics.csv of every stage the checkpoint went "
                                           "through"),
         arg("--funnel", default=None), arg("--evaluation", default=None),
         arg("--start", default=None, help="fetch-hub-model's record of the model the "
                                            "checkpoint started from"),
         arg("--message", default="Upload from lmforge"), OUT,
         job=lambda args: f"publish/{args.repo}",
         inputs=("checkpoint", "tokenizer", "metrics", "funnel", "evaluation", "start"),
         outputs=("out",))
def publish_command(args, job) -> dict:
    """Export a checkpoint in Hugging Face format with a model card (architecture, tokens,
    the mix's funnel, the evaluation, config hash, git commit, lineage back to the crawl) and
    upload it to the Hub; record the commit it made."""
    from lmforge.io import tracking
    from lmforge.io.lineage import lineage_of, render

    def text(path):
        return Path(path).read_text() if path else None

    tree, _ = lineage_of(Path(args.checkpoint) / "model.safetensors")
    facts = {"tokens_seen": tokens_seen(args.metrics), "funnel": text(args.funnel),
             "evaluation": text(args.evaluation),
             "start": read_json(args.start) if args.start else None,
             "lineage": render(tree) if "run" in tree else None, **tracking.provenance()}
    record = publish(args.checkpoint, args.tokenizer, args.repo, args.revision, facts,
                     args.message)
    job.set_tags({"hub.repo": record["repo"], "hub.revision": record["revision"],
                  "hub.commit": record["commit"]})
    write_json(args.out, record)
    return {"files": len(record["files"])}


@command("fetch-hub-dataset", arg("--url", help="hf://datasets/<org>/<name>@<commit>/<file>"),
         OUT, job=lambda args: f"fetch_hub_dataset/{Path(args.out).name}", outputs=("out",))
def fetch_hub_dataset_command(args, job) -> dict:
    """Download one file of a Hub dataset (a released corpus) for `crawl.source: documents`."""
    return {"bytes": fetch_dataset_file(args.url, args.out)["bytes"]}
