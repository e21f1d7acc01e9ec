"""The README names only real commands and real tests, and every command appears in it.

Each check is a function of the text it reads, so a test can show it failing on a crafted one.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any

from typer.main import get_command

from maquette.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
ARCHITECTURE = (ROOT / "ARCHITECTURE.md").read_text()

# A group maps each subcommand's name to its own tree; a leaf command maps to None.
CommandTree = dict[str, Any]


def command_tree(command: object | None = None) -> CommandTree:
    """Every `maquette` command, as nested groups."""
    group = command if command is not None else get_command(app)
    return {
        name: command_tree(sub) if hasattr(sub, "commands") else None
        for name, sub in group.commands.items()  # type: ignore[attr-defined]
    }


def command_paths(tree: CommandTree, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every command and group in `tree`, as the words that name it."""
    paths: set[tuple[str, ...]] = set()
    for name, sub in tree.items():
        paths.add((*prefix, name))
        if sub is not None:
            paths |= command_paths(sub, (*prefix, name))
    return paths


def mentioned_commands(text: str) -> list[tuple[str, ...]]:
    """Each `maquette ...` in `text`, cut before its first option, value or punctuation."""
    found = []
    for match in re.finditer(r"(?<!from )maquette ((?:[a-z][a-z-]* ?)+)", text):
        found.append(tuple(match.group(1).split()))
    return found


def _command_named(words: tuple[str, ...], tree: CommandTree) -> tuple[tuple[str, ...], str]:
    """The command `maquette WORDS` runs, and what is wrong with it ("" if nothing).

    A group must be followed by one of its subcommands; words after a leaf are its arguments.
    """
    path: tuple[str, ...] = ()
    node: CommandTree | None = tree
    for word in words:
        if node is None:
            break
        if word not in node:
            where = f"`maquette {' '.join(path)}`" if path else "maquette"
            return path, f"{word!r} is not a command of {where}"
        path, node = (*path, word), node[word]
    if node is not None:
        return path, f"a group needs one of its subcommands: {', '.join(node)}"
    return path, ""


def unknown_commands(text: str, tree: CommandTree) -> list[str]:
    """Each `maquette ...` in `text` that names no command, with the reason."""
    problems = []
    for words in mentioned_commands(text):
        _, wrong = _command_named(words, tree)
        if wrong:
            problems.append(f"maquette {' '.join(words)}: {wrong}")
    return problems


def undocumented_commands(text: str, tree: CommandTree) -> list[str]:
    """Each command (or group) that no `maquette ...` in `text` runs."""
    documented = set()
    for words in mentioned_commands(text):
        path, wrong = _command_named(words, tree)
        if not wrong:
            documented |= {path[:n] for n in range(1, len(path) + 1)}
    return sorted(" ".join(p) for p in command_paths(tree) - documented)


def test_readme_mentions_only_real_commands() -> None:
    assert len(mentioned_commands(README)) >= 10
    assert unknown_commands(README, command_tree()) == []


def test_every_command_is_in_the_readme() -> None:
    assert undocumented_commands(README, command_tree()) == []


def test_command_checks_catch_a_bogus_command_a_bare_group_and_a_missing_one() -> None:
    tree = command_tree()
    bogus = (
        "Run `maquette models frobnicate`, then `maquette frobnicate now`, then `maquette models`."
    )
    assert unknown_commands(bogus, tree) == [
        "maquette models frobnicate: 'frobnicate' is not a command of `maquette models`",
        "maquette frobnicate now: 'frobnicate' is not a command of maquette",
        "maquette models: a group needs one of its subcommands: " + ", ".join(tree["models"]),
    ]
    # Words after a leaf command are its arguments, not subcommands.
    assert unknown_commands("`maquette features get origin=JFK carrier=UA`", tree) == []
    # A README without `maquette redis stop` (and `status`, or anything named so) fails.
    without = README.replace("maquette redis stop", "").replace("maquette redis status", "")
    assert undocumented_commands(without, tree) == ["redis status", "redis stop"]
    assert "models frobnicate" not in undocumented_commands(bogus, tree)


def test_readme_names_the_two_commands_and_ci_runs_the_test_one() -> None:
    assert "make demo" in README and "make test" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.strip().splitlines()[-1] == "make test"


def test_every_command_example_runs_that_command() -> None:
    group = get_command(app)
    for path in command_paths(command_tree()):
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
    missing = []
    for block in _python_blocks(README):
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


# ------------------------------------------------------------------ the claims table

CLAIMS_SECTION = "## What the tests prove"
CLAIMS_MIN_ROWS = 12
# tests/<path>.py::name, ::Class::name, and a parametrized id ::name[...] (the id is dropped).
TEST_REFERENCE = re.compile(r"(tests/[\w/.-]+?\.py)((?:::\w+)+)(?:\[[^\]\s`]*\])?")


def named_tests(text: str) -> list[tuple[str, tuple[str, ...]]]:
    """Each `tests/<path>.py::name` in `text`: the file and the names after it."""
    return [(m.group(1), tuple(m.group(2).split("::")[1:])) for m in TEST_REFERENCE.finditer(text)]


def _defined_tests(tree: ast.Module) -> set[tuple[str, ...]]:
    """The test functions pytest collects from a module: test_* and Test*.test_* methods."""
    found: set[tuple[str, ...]] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name.startswith("test"):
                found.add((node.name,))
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for item in node.body:
                is_function = isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                if is_function and item.name.startswith("test"):
                    found.add((node.name, item.name))
    return found


def missing_tests(text: str, root: Path = ROOT) -> list[str]:
    """Each test reference in `text` whose file or test function does not exist."""
    problems = []
    for file, names in named_tests(text):
        reference = "::".join((file, *names))
        path = root / file
        if not path.is_file():
            problems.append(f"{reference}: no such file")
        elif names not in _defined_tests(ast.parse(path.read_text())):
            problems.append(f"{reference}: {file} defines no test function {'::'.join(names)}")
    return problems


def claims_table_problems(text: str) -> list[str]:
    """What is wrong with the README's table of promises and the tests that prove them."""
    if CLAIMS_SECTION not in text:
        return [f"no section {CLAIMS_SECTION!r}"]
    section = text.split(CLAIMS_SECTION, 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.strip().startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")] if lines else []
    if header != ["Promise", "Test"]:
        return [f"the section holds no `| Promise | Test |` table (header: {header})"]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    problems = [
        f"row {n}: {row} does not name a test as `tests/<path>.py::<name>`"
        for n, row in enumerate(rows, 1)
        if len(row) != 2 or not row[0] or not named_tests(row[1])
    ]
    if len(rows) < CLAIMS_MIN_ROWS:
        problems.append(f"{len(rows)} rows; at least {CLAIMS_MIN_ROWS} promises are expected")
    return problems


def test_claims_table_names_tests_that_exist() -> None:
    assert claims_table_problems(README) == []
    assert len(named_tests(README)) >= CLAIMS_MIN_ROWS
    assert missing_tests(README) == []
    assert missing_tests(ARCHITECTURE) == []


def test_claims_checks_catch_a_missing_test_file_and_function_and_a_short_table() -> None:
    here = "tests/test_docs.py"
    text = (
        f"{CLAIMS_SECTION}\n\n| Promise | Test |\n|---|---|\n"
        f"| commands are documented | `{here}::test_every_command_is_in_the_readme` |\n"
        f"| parametrized ids are dropped | `{here}::test_readme_mentions_only_real_commands[x-1]` |\n"
        f"| a test that was renamed | `{here}::test_that_was_renamed` |\n"
        f"| a helper is not a test | `{here}::missing_tests` |\n"
        "| a file that went | `tests/test_gone.py::test_anything` |\n"
        "| no test named | see the code |\n"
        "\n## Next section\n"
    )
    assert missing_tests(text) == [
        f"{here}::test_that_was_renamed: {here} defines no test function test_that_was_renamed",
        f"{here}::missing_tests: {here} defines no test function missing_tests",
        "tests/test_gone.py::test_anything: no such file",
    ]
    assert claims_table_problems(text) == [
        "row 6: ['no test named', 'see the code'] does not name a test as "
        "`tests/<path>.py::<name>`",
        f"6 rows; at least {CLAIMS_MIN_ROWS} promises are expected",
    ]
    assert claims_table_problems("# README\n") == [f"no section {CLAIMS_SECTION!r}"]
