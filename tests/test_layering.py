"""Imports point down (docs/ARCHITECTURE.md): no module imports a layer above it, nor a sibling of its own layer.

The package's import graph is read with ``ast`` (nothing is imported), every
import is mapped to the package module it names, and each edge is checked
against the layer table below: one line per folder (a top-level subpackage of
``patronus_ext``) or top-level module.  Inside one folder imports are free,
except between siblings: the sub-commands of ``cli/commands/`` (which share
code only through lower layers or a private helper module such as
``_options.py``) and the detectors of ``detect/`` (which share code only
through ``detect``'s own modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "patronus_ext"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

#: Folder (or top-level module) -> its layer, lowest first.  "" is the package root.
LAYER_OF: dict[str, int] = {
    "": 0,           # the version string
    "ops": 1,        # the kernel op API, pure-PyTorch references, loading _C, HotFlip candidate scoring
    "core": 2,       # argument checks, named profiles, atomic files, diff/poison cosines
    "formats": 3,    # backdoor.json, the attack-vector bank, the scan report, purify.json
    "data": 4,       # corpora and tasks, tokenizer facts, trigger insertion/matching, instruction data
    "lm": 5,         # model sources, safe loading, folders, ModelAdapter, the training loop, fine-tuning,
                     # prompting, instruction tuning, generation
    "attacks": 6,    # test subjects
    "evaluate": 6,   # metrics
    "detect": 7,     # the detectors (Patronus, LMSanitator)
    "monitor": 7,    # the input and output monitors, the service
    "purify": 7,     # the purifiers
    "audit": 8,      # the detectors over a model registry
    "cli": 9,        # the command line, formatting, plots, the demo
    "info": 9,       # python -m patronus_ext.info
}
#: Packages whose children are siblings that must not import each other: "modules" (every child module but
#: private ``_x`` helpers) or "subpackages" (child subpackages; the package's plain modules are shared).
SIBLING_PACKAGES = {"cli.commands": "modules", "detect": "subpackages"}
#: At most this many modules directly under patronus_ext/ (everything else lives in a layer's folder).
MAX_ROOT_MODULES = 6


def layer_of(unit: str) -> int:
    return LAYER_OF[unit]


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


def sibling_package(module: str, target: str, packages: set[str]) -> str | None:
    """The package of :data:`SIBLING_PACKAGES` under which ``module`` imports a sibling ``target``, or None."""
    for parent, kind in SIBLING_PACKAGES.items():
        prefix = parent + "."
        if not (module.startswith(prefix) and target.startswith(prefix)):
            continue
        mine, theirs = module[len(prefix):].split(".")[0], target[len(prefix):].split(".")[0]
        if mine == theirs:
            return None
        if kind == "modules" and not theirs.startswith("_"):
            return parent
        if kind == "subpackages" and {prefix + mine, prefix + theirs} <= packages:
            return parent
    return None


def violations(graph: dict[str, set[str]], packages: set[str] = frozenset()) -> list[str]:
    found = []
    for module, targets in sorted(graph.items()):
        unit = module.split(".")[0]
        for target in sorted(targets):
            target_unit = target.split(".")[0]
            if target_unit == unit:
                parent = sibling_package(module, target, packages)
                if parent is not None:
                    found.append(f"{module} -> {target} (sideways between the siblings of {parent})")
                continue
            low, high = layer_of(target_unit), layer_of(unit)
            if low > high:
                found.append(f"{module} -> {target} (upward)")
            elif low == high:
                found.append(f"{module} -> {target} (sideways within one layer)")
    return found


def package_files() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def package_graph() -> dict[str, set[str]]:
    files = package_files()
    known = {module_name(f, ROOT) for f in files}
    return {module_name(f, ROOT): imported_modules(f.read_text(encoding="utf-8"), module_name(f, ROOT),
                                                   f.name == "__init__.py", known)
            for f in files}


def subpackages() -> set[str]:
    return {module_name(f, ROOT) for f in package_files() if f.name == "__init__.py"}


def test_every_unit_has_a_layer():
    units = {name.split(".")[0] for name in package_graph()}
    missing = sorted(u for u in units if u not in LAYER_OF)
    assert not missing, f"add these folders or modules to LAYER_OF in tests/test_layering.py: {missing}"


def test_imports_point_down():
    problems = violations(package_graph(), subpackages())
    assert not problems, "imports against docs/ARCHITECTURE.md's layers:\n" + "\n".join(problems)


def test_the_package_root_holds_only_a_few_modules():
    """Every layer lives in its folder: the root keeps the version, ``info`` and the compiled module."""
    modules = sorted(p.name for p in ROOT.iterdir() if p.is_file() and p.suffix in (".py", ".so", ".pyd"))
    assert len(modules) <= MAX_ROOT_MODULES, f"too many modules directly under {PACKAGE}/: {modules}"


def test_the_checker_sees_upward_sideways_and_relative_imports():
    known = {"", "lm", "lm.adapter", "attacks", "attacks.base", "evaluate", "evaluate.harness", "cli",
             "cli.commands", "cli.commands.scan", "cli.commands.demo", "cli.commands._options", "cli.formatting",
             "detect", "detect.texts", "detect.patronus", "detect.patronus.scan", "detect.lmsanitator",
             "detect.lmsanitator.inversion"}
    packages = {"", "lm", "attacks", "evaluate", "cli", "cli.commands", "detect", "detect.patronus",
                "detect.lmsanitator"}
    graph = {
        "lm.adapter": imported_modules("from ..attacks import base\n", "lm.adapter", False, known),
        "evaluate.harness": imported_modules("from ..attacks.base import load\n", "evaluate.harness", False, known),
        "cli.commands.demo": imported_modules("from .scan import summary\nimport patronus_ext.cli.formatting\n"
                                              "from ._options import add_run_options\n",
                                              "cli.commands.demo", False, known),
        "detect.lmsanitator.inversion": imported_modules("from ..patronus.scan import prepare\n"
                                                         "from ..texts import read\n",
                                                         "detect.lmsanitator.inversion", False, known),
    }
    assert graph["lm.adapter"] == {"attacks.base"}
    assert graph["evaluate.harness"] == {"attacks.base"}
    assert graph["cli.commands.demo"] == {"cli.commands.scan", "cli.commands._options", "cli.formatting"}
    assert graph["detect.lmsanitator.inversion"] == {"detect.patronus.scan", "detect.texts"}
    found = violations(graph, packages)
    assert any(v.startswith("lm.adapter -> attacks.base (upward)") for v in found)
    assert any(v.startswith("evaluate.harness -> attacks.base (sideways") for v in found)
    assert any(v.startswith("cli.commands.demo -> cli.commands.scan (sideways") for v in found)
    assert any(v.startswith("detect.lmsanitator.inversion -> detect.patronus.scan (sideways") for v in found)
    assert not any(v.startswith(("cli.commands.demo -> cli.formatting", "cli.commands.demo -> cli.commands._options",
                                 "detect.lmsanitator.inversion -> detect.texts")) for v in found)


@pytest.mark.parametrize("unit", ["ops", "core", "formats", "data", "lm"])
def test_low_layers_import_no_defense_attack_or_face(unit):
    graph = package_graph()
    high = {u for u, level in LAYER_OF.items() if level >= LAYER_OF["attacks"]}
    for module, targets in graph.items():
        if module.split(".")[0] == unit:
            assert not {t.split(".")[0] for t in targets} & high, f"{module} imports {targets & high}"
