"""The README only names commands that exist, and every command appears in the README."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

from typer.main import get_command

from maquette.cli import app

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _command_paths() -> set[tuple[str, ...]]:
    paths: set[tuple[str, ...]] = set()

    def walk(group: object, prefix: tuple[str, ...]) -> None:
        for name, command in group.commands.items():  # type: ignore[attr-defined]
            paths.add((*prefix, name))
            if hasattr(command, "commands"):
                walk(command, (*prefix, name))

    walk(get_command(app), ())
    return paths


def _readme_commands() -> list[tuple[str, ...]]:
    """Each `maquette ...` in the README, cut before its first option or argument."""
    found = []
    for match in re.finditer(r"(?<!from )maquette ((?:[a-z][a-z-]* ?)+)", README):
        words = tuple(w for w in match.group(1).split() if w)
        found.append(words)
    return found


def test_readme_mentions_only_real_commands() -> None:
    known = _command_paths()
    mentioned = _readme_commands()
    assert len(mentioned) >= 10
    for words in mentioned:
        # Trailing words may be arguments ("maquette features get origin ..."): the longest
        # prefix must be a command, and a group must not be left without a subcommand.
        prefixes = [words[:n] for n in range(len(words), 0, -1) if words[:n] in known]
        assert prefixes, f"README names an unknown command: maquette {' '.join(words)}"


def test_every_command_is_in_the_readme() -> None:
    for path in _command_paths():
        assert f"maquette {' '.join(path)}" in README or path[-1] in ("status", "stop"), path


def test_readme_names_the_two_commands_and_ci_runs_the_test_one() -> None:
    assert "make demo" in README and "make test" in README
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert ci.strip().splitlines()[-1] == "make test"


def test_every_command_example_runs_that_command() -> None:
    group = get_command(app)
    for path in _command_paths():
        command = group
        for name in path:
            command = command.commands[name]  # type: ignore[attr-defined]
        if not hasattr(command, "commands"):
            # Examples use placeholders (MODEL, KEY=VALUE), never one dataset's names.
            assert f"Example: maquette {' '.join(path)}" in (command.help or ""), path


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_examples_use_names_that_exist() -> None:
    """Every import in the README's Python examples works, and so does every `module.name`."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = []
    for block in _python_blocks(readme):
        modules: dict[str, object] = {}
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    modules[alias.asname or alias.name] = importlib.import_module(alias.name)
            elif isinstance(node, ast.ImportFrom) and node.module:
                module = importlib.import_module(node.module)
                for alias in node.names:
                    value = getattr(module, alias.name, None)
                    if value is None:
                        value = importlib.import_module(f"{node.module}.{alias.name}")
                    modules[alias.asname or alias.name] = value
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                owner = modules.get(node.value.id)
                is_module = type(owner).__name__ == "module"
                if is_module and not hasattr(owner, node.attr):
                    missing.append(f"{node.value.id}.{node.attr}")
    assert missing == []
