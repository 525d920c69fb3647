"""Imports point down (ARCHITECTURE.md): no module imports a layer above it, nor a sibling of its own layer.

The package's import graph is read with ``ast`` (nothing is imported), every
import is mapped to the package module it names, and each edge is checked
against the layer table below.  Inside one unit (a top-level module or
subpackage such as ``attacks/``) imports are free, except between the
sub-commands of ``commands/``, which share code only through lower modules or
a private helper module of their own (``commands/_options.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "patronus_ext"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

#: Lowest first.  A unit is a top-level module or subpackage of patronus_ext ("" is the package root).
LAYERS: list[set[str]] = [
    {"", "_extension", "reference"},          # version string, loading _C, pure-PyTorch oracles
    {"ops"},                                  # the kernel op API
    {"validation", "io", "tokens", "similarity"},  # config checks; atomic files, backdoor.json; tokenizer
                                              # facts (special layout, word starts); diff/poison cosines
    {"bank", "hotflip"},                      # the attack-vector bank format; HotFlip candidate scoring
    {"data", "triggers", "training", "scan_report"},  # corpora, trigger insertion/matching/prompts, the loop,
                                              # a scan report's triggers checked against a model
    {"models", "instruct"},                   # adapters, safe loading and saving; instruction data, chat
                                              # formatting and the response-only tuning loop (causal LMs)
    {"attacks", "evaluate"},                  # test subjects and metrics
    {"detect", "monitor", "purify"},          # the defenses
    {"demo", "plots", "report", "info", "audit"},  # faces (audit runs the detectors over many models)
    {"commands"},                             # sub-commands
    {"cli"},
]
#: Units whose modules must not import each other (siblings that share code through lower modules).
NO_INTERNAL_IMPORTS = {"commands"}


def layer_of(unit: str) -> int:
    for index, units in enumerate(LAYERS):
        if unit in units:
            return index
    raise KeyError(unit)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Package modules (names relative to the package, "" = its root) that ``source`` imports."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    package = [p for p in package if p]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == PACKAGE:
                target = node.module.split(".")[1:]
            else:
                continue
            candidates = [".".join(target + [alias.name]) for alias in node.names] or [".".join(target)]
            for candidate in candidates:
                names.add(candidate if candidate in known else ".".join(target))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE:
                    names.add(".".join(parts[1:]))
    return names


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(graph.items()):
        unit = module.split(".")[0]
        for target in sorted(targets):
            target_unit = target.split(".")[0]
            if target_unit == unit:
                private = target.split(".")[-1].startswith("_")
                if unit in NO_INTERNAL_IMPORTS and module != unit and target not in (unit, module) and not private:
                    found.append(f"{module} -> {target} (sideways between sub-commands)")
                continue
            low, high = layer_of(target_unit), layer_of(unit)
            if low > high:
                found.append(f"{module} -> {target} (upward)")
            elif low == high:
                found.append(f"{module} -> {target} (sideways within one layer)")
    return found


def package_graph() -> dict[str, set[str]]:
    files = sorted(ROOT.rglob("*.py"))
    known = {module_name(f, ROOT) for f in files}
    return {module_name(f, ROOT): imported_modules(f.read_text(encoding="utf-8"), module_name(f, ROOT),
                                                   f.name == "__init__.py", known)
            for f in files}


def test_every_unit_has_a_layer():
    units = {name.split(".")[0] for name in package_graph()}
    missing = sorted(u for u in units if not any(u in layer for layer in LAYERS))
    assert not missing, f"add these modules to LAYERS in tests/test_layering.py: {missing}"


def test_imports_point_down():
    problems = violations(package_graph())
    assert not problems, "imports against ARCHITECTURE.md's layers:\n" + "\n".join(problems)


def test_the_checker_sees_upward_sideways_and_relative_imports():
    known = {"", "models", "attacks", "attacks.base", "evaluate", "evaluate.harness", "commands",
             "commands.scan", "commands.demo", "commands._options", "report"}
    graph = {
        "models": imported_modules("from .attacks import base\n", "models", False, known),
        "evaluate.harness": imported_modules("from ..attacks.base import load\n", "evaluate.harness", False, known),
        "commands.demo": imported_modules("from .scan import summary\nimport patronus_ext.report\n"
                                          "from ._options import add_run_options\n",
                                          "commands.demo", False, known),
    }
    assert graph["models"] == {"attacks.base"}
    assert graph["evaluate.harness"] == {"attacks.base"}
    assert graph["commands.demo"] == {"commands.scan", "commands._options", "report"}
    found = violations(graph)
    assert any(v.startswith("models -> attacks.base (upward)") for v in found)
    assert any(v.startswith("evaluate.harness -> attacks.base (sideways") for v in found)
    assert any(v.startswith("commands.demo -> commands.scan (sideways") for v in found)
    assert not any(v.startswith(("commands.demo -> report", "commands.demo -> commands._options")) for v in found)


@pytest.mark.parametrize("unit", ["models", "triggers", "data", "io"])
def test_low_modules_import_no_defense_attack_or_face(unit):
    graph = package_graph()
    high = set().union(*LAYERS[layer_of("attacks"):])
    for module, targets in graph.items():
        if module.split(".")[0] == unit:
            assert not {t.split(".")[0] for t in targets} & high, f"{module} imports {targets & high}"
