"""Each rule's code inputs, computed from the import graph of the command it runs.

A rule runs `lmforge <command>`; the CLI imports only that command's module (lmforge.cli
COMMANDS), so the code the job executes is that module, the CLI, and everything they import,
transitively, lazy imports inside functions included. Listing those files as the rule's inputs
makes Snakemake rerun exactly the jobs whose code changed (it compares checksums, so an edit
reruns them and a touch does not). The graph is read from source, not by importing it.
"""

from __future__ import annotations

import ast
from functools import cached_property
from pathlib import Path

PACKAGE = "lmforge"


class CodeGraph:
    def __init__(self, root: str | Path = Path(__file__).resolve().parent):
        self.root = Path(root)  # the package directory, src/lmforge
        self._imports: dict[str, frozenset[str]] = {}

    def module_path(self, name: str) -> Path | None:
        """The source file of module `name` (lmforge.a.b), or None if it is not one of ours."""
        if name != PACKAGE and not name.startswith(PACKAGE + "."):
            return None
        parts = name.split(".")[1:]
        if not parts:
            return self.root / "__init__.py"
        for path in (self.root.joinpath(*parts[:-1], parts[-1] + ".py"),
                     self.root.joinpath(*parts, "__init__.py")):
            if path.is_file():
                return path
        return None

    def imports_of(self, module: str) -> frozenset[str]:
        """lmforge modules that `module` imports anywhere in its source."""
        if module not in self._imports:
            found = set()
            for node in ast.walk(ast.parse(self.module_path(module).read_text())):
                if isinstance(node, ast.Import):
                    found.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:
                        package = module.split(".")[: -node.level]
                        base = ".".join(package + ([node.module] if node.module else []))
                    found.add(base)
                    # `from package import module` imports the module itself.
                    found.update(f"{base}.{alias.name}" for alias in node.names)
            self._imports[module] = frozenset(n for n in found if self.module_path(n))
        return self._imports[module]

    def closure(self, modules: list[str]) -> set[str]:
        """The modules and every module they import, with the packages Python runs on the way
        (their __init__.py)."""
        todo, seen = list(modules), set()
        while todo:
            parts = todo.pop().split(".")
            for name in {".".join(parts[:i]) for i in range(1, len(parts) + 1)} - seen:
                seen.add(name)
                todo.extend(self.imports_of(name))
        return seen

    @cached_property
    def commands(self) -> dict[str, str]:
        """lmforge.cli's COMMANDS table (command → module), read from its source."""
        tree = ast.parse((self.root / "cli.py").read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COMMANDS":
                return ast.literal_eval(node.value)
        raise ValueError(f"{self.root / 'cli.py'} has no COMMANDS table")

    def command_modules(self, command: str) -> set[str]:
        """Every lmforge module that `lmforge <command>` imports."""
        if command not in self.commands:
            raise KeyError(f"no lmforge command {command!r}")
        return self.closure([f"{PACKAGE}.cli", self.commands[command]])

    def command_sources(self, command: str) -> list[str]:
        """The source files of `lmforge <command>`, sorted."""
        return sorted(str(self.module_path(m)) for m in self.command_modules(command))
