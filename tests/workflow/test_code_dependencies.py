"""Change one module, rerun exactly what imports it: the finished tiny run, one edit at a time."""

import re
from pathlib import Path

import pytest

from lmforge.codegraph import CodeGraph
from workflow_helpers import snakemake

pytestmark = pytest.mark.workflow
RULE = re.compile(r"^(?:local)?rule (\w+):", re.M)


def rule_commands(repo: Path) -> dict[str, set[str]]:
    """Each rule's `lmforge` commands, read from its shell command in the rule files."""
    commands = {}
    for path in sorted((repo / "workflow/rules").glob("*.smk")):
        blocks = RULE.split(path.read_text())[1:]
        for name, body in zip(blocks[::2], blocks[1::2]):
            shell = body.split("shell:", 1)[1] if "shell:" in body else ""
            commands[name] = set(re.findall(r"lmforge ([a-z][a-z-]*)", shell))
    return commands


def planned_reasons(plan: str) -> dict[str, set[str]]:
    """The dry run's summary of reasons: reason → the rules it plans."""
    summary = plan.split("Reasons:", 1)[1] if "Reasons:" in plan else ""
    reasons, current = {}, None
    for line in summary.splitlines():
        if line.startswith("    ") and not line.startswith("        ") and line.strip():
            current = line.strip().rstrip(":")
            reasons[current] = set()
        elif line.startswith("        ") and current:
            reasons[current] |= {r.strip() for r in line.split(",") if r.strip()}
    return reasons


def test_every_rule_lists_the_code_of_the_commands_it_runs(repo):
    graph = CodeGraph(repo / "src/lmforge")
    commands = rule_commands(repo)
    assert {c for cs in commands.values() for c in cs} <= set(graph.commands)
    assert len([r for r, cs in commands.items() if cs]) >= 40


def test_editing_a_module_reruns_exactly_the_rules_that_import_it(repo, finished):
    fast = str(repo / "fast.yaml")
    assert "Nothing to be done" in snakemake(repo, finished, "-n", "--configfile", fast).stdout
    graph = CodeGraph(repo / "src/lmforge")
    everything = snakemake(repo, finished, "-n", "--forceall", "--configfile", fast).stdout
    in_dag = set(re.findall(r"^(?:local)?rule (\w+):", everything, re.M))
    commands = {rule: cs for rule, cs in rule_commands(repo).items() if cs and rule in in_dag}
    importers: dict[str, set[str]] = {}
    for rule, cs in commands.items():
        for command in cs:
            for module in graph.command_modules(command):
                importers.setdefault(module, set()).add(rule)
    modules = sorted(str(p.relative_to(repo / "src")) for p in (repo / "src/lmforge").rglob("*.py"))
    assert len(modules) > 50
    for relative in modules:
        path = repo / "src" / relative
        module = relative.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        original = path.read_bytes()
        try:
            path.write_bytes(original + b"\n# an edit\n")
            plan = snakemake(repo, finished, "-n", "--configfile", fast).stdout
        finally:
            path.write_bytes(original)
        reasons = planned_reasons(plan)
        expected = importers.get(module, set())
        assert reasons.get("updated input files", set()) == expected, relative
        downstream = reasons.get("input files updated by another job", set())
        assert set().union(*reasons.values()) <= expected | downstream | {"all"}, relative
        if not expected:
            assert "Nothing to be done" in plan, relative
    assert "Nothing to be done" in snakemake(repo, finished, "-n", "--configfile", fast).stdout
