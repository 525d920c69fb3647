"""The documents the repository cites exist, and the README says what the code does: every cited document path is
in the repository, every ``docs/METHODS.md §N`` has its section, the README's Python names resolve and its
command lines use options the commands have."""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [p for folder in ("patronus_ext", "tests", "benchmarks", "scripts", "csrc", ".ci", "docs")
           for p in sorted((ROOT / folder).rglob("*")) if p.is_file()
           and p.suffix in (".py", ".cpp", ".h", ".cu", ".cuh", ".sh", ".md", ".txt", ".toml")
           and "builtin-data" not in p.parts] + [ROOT / "README.md", ROOT / "setup.py", ROOT / "CMakeLists.txt"]
DOCUMENT = re.compile(r"(?<![\w./*-])((?:[\w.-]+/)*[\w.-]*[A-Za-z][\w-]*\.md)\b")
#: Markdown files the package WRITES (an audit's summary), and placeholders for an output folder (DIR/, OUT/):
#: names of outputs, not documents the repository cites.
OUTPUTS = re.compile(r"^(summary\.md|[A-Z]+/.*)$")
README = (ROOT / "README.md").read_text(encoding="utf-8")


def cited_documents() -> list[tuple[Path, str]]:
    return [(source, match.group(1)) for source in SOURCES
            for match in DOCUMENT.finditer(source.read_text(encoding="utf-8", errors="replace"))]


def test_every_cited_document_is_in_the_repository():
    missing = []
    for source, cited in cited_documents():
        if cited.startswith(("http", "www.")) or OUTPUTS.match(cited):
            continue
        where = [source.parent / cited, ROOT / cited]
        if "/" not in cited:  # a bare name is one of the repository's own documents
            where += [ROOT / "docs" / cited, ROOT / "benchmarks" / cited]
        if not any(p.is_file() for p in where):
            missing.append(f"{source.relative_to(ROOT)} cites {cited}")
    assert not missing, "documents cited but not in the repository:\n" + "\n".join(sorted(set(missing)))


def test_every_cited_methods_section_exists():
    methods = (ROOT / "docs" / "METHODS.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^## (\d+)\. ", methods, flags=re.M))
    cited = {(source, number) for source in SOURCES
             for number in re.findall(r"METHODS\.md §(\d+)", source.read_text(encoding="utf-8", errors="replace"))}
    assert cited, "nothing cites docs/METHODS.md: the test reads the wrong files"
    wrong = sorted(f"{s.relative_to(ROOT)}: §{n}" for s, n in cited if n not in sections)
    assert not wrong, f"sections cited but not in docs/METHODS.md (has {sorted(sections)}): {wrong}"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readmes_python_imports_and_dotted_names_resolve():
    for block in _python_blocks(README):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module.startswith("patronus_ext"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                        f"README: from {node.module} import {alias.name}"
    for dotted in set(re.findall(r"`(patronus_ext(?:\.\w+)+)", README)):
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for name in parts[cut:]:
                assert hasattr(obj, name), f"README names {dotted}, but {name} is not there"
                obj = getattr(obj, name)
            break


def _readme_command_lines() -> list[list[str]]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            for part in re.split(r"&&|;", line):
                words = shlex.split(part.split("#")[0].replace("|", " ").replace("[", " ").replace("]", " "))
                if words[:1] == ["patronus"] and len(words) > 1:
                    lines.append(words[1:])
    return lines


def test_the_readmes_command_lines_use_options_the_commands_have():
    from patronus_ext.cli.main import build_parser

    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    lines = _readme_command_lines()
    assert len(lines) >= 10, "the README's command lines were not found"
    unknown = []
    for words in lines:
        verb = verbs.get(words[0])
        assert verb is not None, f"README runs an unknown command: patronus {' '.join(words)}"
        known = {o for a in verb._actions for o in a.option_strings}
        unknown += [f"patronus {words[0]} {w}" for w in words if w.startswith("--") and w.split("=")[0] not in known]
    assert not unknown, "README options the commands do not have:\n" + "\n".join(unknown)


@pytest.mark.parametrize("verb", ["scan", "purify", "monitor", "serve", "attack", "audit"])
def test_report_is_only_ever_an_output(verb):
    """``--report`` names a file the command writes; a command that reads a scan report calls it --scan-report."""
    from patronus_ext.cli.main import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices[verb]
    actions = {o: a for a in sub._actions for o in a.option_strings}
    if "--scan-report" in actions:
        assert actions["--report"].help == "==SUPPRESS==" and actions["--report"].dest == "scan_report"
    elif "--report" in actions:
        assert actions["--report"].help.startswith("write ")
