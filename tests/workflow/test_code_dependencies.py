"""Change one module, rerun exactly what imports it: the finished tiny run, one edit at a time."""

import re
from collections import Counter
from pathlib import Path

import pytest

from lmforge.codegraph import CodeGraph
from workflow_helpers import snakemake

pytestmark = pytest.mark.workflow
# Rules may sit in an `if` block (crawl.smk), indented.
RULE = re.compile(r"^[ \t]*(?:local)?rule (\w+):", re.M)


def rule_blocks(repo: Path) -> dict[str, str]:
    """Each rule's text in the rule files."""
    blocks = {}
    for path in sorted((repo / "workflow/rules").glob("*.smk")):
        parts = RULE.split(path.read_text())[1:]
        blocks.update(zip(parts[::2], parts[1::2]))
    return blocks


def rule_commands(repo: Path) -> dict[str, set[str]]:
    """Each rule's `lmforge` commands, read from its shell command."""
    return {name: set(re.findall(r"lmforge ([a-z][a-z-]*)", body.split("shell:", 1)[1]))
            if "shell:" in body else set() for name, body in rule_blocks(repo).items()}


def job_reasons(plan: str) -> list[tuple[str, str]]:
    """(rule, reason) of every job the dry run plans."""
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    reason: (.*)$", plan, re.M)
    return [(rule, reason) for rule, reason in jobs]


def rerun_by(dag: str, rules: set[str]) -> Counter:
    """Jobs per rule that must rerun when every job of `rules` does: those jobs and every job
    that consumes their outputs, transitively (Snakemake's job graph, `--dag`)."""
    rule_of = {node: label.split("\\n")[0]
               for node, label in re.findall(r'^\s*(\d+)\[label = "([^"]*)"', dag, re.M)}
    consumers: dict[str, list[str]] = {}
    for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dag, re.M):
        consumers.setdefault(a, []).append(b)
    found = {node for node, rule in rule_of.items() if rule in rules}
    todo = list(found)
    while todo:
        for node in consumers.get(todo.pop(), []):
            if node not in found:
                found.add(node)
                todo.append(node)
    return Counter(rule_of[node] for node in found)


def test_every_rule_lists_the_code_of_the_commands_it_runs(repo):
    graph = CodeGraph(repo / "src/lmforge")
    commands = rule_commands(repo)
    assert {c for cs in commands.values() for c in cs} <= set(graph.commands)
    assert len([r for r, cs in commands.items() if cs]) >= 40
    # A rule's code inputs name exactly the commands its shell runs.
    for name, body in rule_blocks(repo).items():
        declared = re.findall(r"^\s+code\(([^)]*)\),", body, re.M)
        named = set(re.findall(r'"([a-z-]+)"', declared[0])) if declared else set()
        assert named == commands[name], name


def job_inputs(plan: str) -> dict[str, set[str]]:
    """Every input file of each rule's jobs in a dry run's plan."""
    inputs: dict[str, set[str]] = {}
    for rule, listed in re.findall(r"^(?:local)?rule (\w+):\n    input: (.*)$", plan, re.M):
        inputs.setdefault(rule, set()).update(listed.split(", "))
    return inputs


def test_editing_a_module_reruns_exactly_the_rules_that_import_it(repo, finished):
    """Every module is a code input of exactly the rules whose commands import it (all jobs
    planned once, with their inputs); editing one reruns those rules' jobs and everything
    downstream of them, nothing else (a leaf module, a shared one and one no rule imports are
    edited: the rerun is Snakemake's own rule for an updated input)."""
    fast = str(repo / "fast.yaml")
    assert "Nothing to be done" in snakemake(repo, finished, "-n", "--configfile", fast).stdout
    graph = CodeGraph(repo / "src/lmforge")
    dag = snakemake(repo, finished, "--dag", "--configfile", fast).stdout
    in_dag = set(re.findall(r'label = "(\w+)', dag))
    commands = {rule: cs for rule, cs in rule_commands(repo).items() if cs and rule in in_dag}
    importers: dict[str, set[str]] = {}
    for rule, cs in commands.items():
        for command in cs:
            for module in graph.command_modules(command):
                importers.setdefault(module, set()).add(rule)
    files = sorted(str(p.relative_to(repo / "src")) for p in (repo / "src/lmforge").rglob("*.py"))
    assert len(files) > 50

    def module_of(relative: str) -> str:
        return relative.removesuffix(".py").removesuffix("/__init__").replace("/", ".")

    inputs = job_inputs(snakemake(repo, finished, "-n", "--forceall", "--configfile",
                                  fast).stdout)
    assert set(inputs) == in_dag
    for relative in files:
        listing = {rule for rule, paths in inputs.items() if str(repo / "src" / relative) in paths}
        assert listing == importers.get(module_of(relative), set()), relative
    for relative in ("lmforge/data/labeleval.py", "lmforge/io/storage.py", "lmforge/codegraph.py"):
        path = repo / "src" / relative
        original = path.read_bytes()
        try:
            path.write_bytes(original + b"\n# an edit\n")
            plan = snakemake(repo, finished, "-n", "--configfile", fast).stdout
        finally:
            path.write_bytes(original)
        rules = importers.get(module_of(relative), set())
        jobs = job_reasons(plan)
        # Planned: every job of the importing rules and the jobs that consume their outputs,
        # nothing else.
        assert Counter(rule for rule, _ in jobs) == rerun_by(dag, rules), relative
        # Only an importing rule is planned because its own inputs changed.
        assert {rule for rule, reason in jobs if "Updated input files" in reason} <= rules, relative
        assert not rules or rules & {rule for rule, _ in jobs}, relative
    assert "Nothing to be done" in snakemake(repo, finished, "-n", "--configfile", fast).stdout
