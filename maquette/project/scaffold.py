"""`init_project`: a new project folder from the templates, with ports of its own.

The templates (package data in `templates/`, `{{name}}` placeholders) hold a generic feature
repo: an entity, a static view, a daily view, an entity-less view, a stream view, an on-demand
view and a feature service, over the ratings shop that `--example` generates (with it,
`alert_faults.yaml`: the faults the alert benchmark injects into a replay of its June).
`flows/` and `bentos/` are copied from the Maquette checkout, since a project runs its own
copies.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from maquette.errors import ConfigError

TEMPLATES = Path(__file__).resolve().parent / "templates"
# Ports are drawn from this range (below Linux's ephemeral ports, 32768 and up), six in a row.
_PORT_LOW, _PORT_SLOTS, _PER_PROJECT = 20_000, 2_000, 6
# What a user writes (or replaces) for their project; feature_store.yaml mirrors maquette.yaml.
_USER_FILES = ("maquette.yaml", "feature_repo/*.py", "features_sql/*.sql")
# The faults `maquette bench alerts` injects into a replay of the example's June.
EXAMPLE_ONLY = "alert_faults.yaml"


@dataclass(frozen=True)
class ProjectPorts:
    """The loopback ports of one project's embedded Redis, service, Prefect server, runner,
    console and PostgreSQL (used with orchestration.database: postgresql)."""

    redis: int
    serving: int
    prefect: int
    runner: int
    console: int
    postgres: int


@dataclass
class InitResult:
    """What `init_project` wrote."""

    folder: Path
    ports: ProjectPorts
    example: bool
    files: list[Path] = field(default_factory=list)

    @property
    def user_lines(self) -> int:
        return user_lines(self.folder)


def init_project(
    folder: Path, example: bool = False, force: bool = False, checkout: Path | None = None
) -> InitResult:
    """Write a new project into `folder`: settings, feature repo, feature SQL, flows, bento.

    `example` also writes data/ (a generated ratings shop), declares two models over it and
    writes alert_faults.yaml (the alert benchmark's replay of June and its faults).
    A folder that holds anything is refused unless `force`. `checkout` is where flows/ and
    bentos/ are copied from (default: the checkout this maquette package runs from).
    """
    folder = folder.resolve()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file.", "Name a new folder for the project.")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise ConfigError(
            f"{folder} is not empty.",
            "Name a new or empty folder, or pass --force to write the project's files over it.",
        )
    sources = _adapters(checkout)
    if folder in {source.parent.resolve() for source in sources.values()}:
        raise ConfigError(
            f"{folder} is the Maquette checkout init copies flows/ and bentos/ from.",
            "Create the project in a folder of its own, e.g. `maquette init ../shop`.",
        )
    # A project written again (--force) keeps its ports: its running parts still hold them.
    ports = _ports_in_settings(folder) or project_ports(folder)
    values = _values(folder, ports, example)
    written: list[Path] = []
    for template in sorted(TEMPLATES.rglob("*.tmpl")):
        relative = template.relative_to(TEMPLATES).with_suffix("")
        if relative.name == "models.yaml":
            continue  # spliced into maquette.yaml
        if relative.name == EXAMPLE_ONLY and not example:
            continue  # its faults name the example's views, models and June of data
        target = folder / (".gitignore" if relative.name == "gitignore" else relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_render(template.read_text(), values))
        written.append(target)
    for part, source in sources.items():
        shutil.copytree(
            source, folder / part, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
        )
        written.append(folder / part)
    if example:
        # Imported here: numpy is needed only for the example data.
        from maquette.project.example_data import write_example_data

        written += write_example_data(folder / "data")
    return InitResult(folder, ports, example, written)


def project_ports(folder: Path) -> ProjectPorts:
    """Six consecutive free loopback ports derived from the folder's path.

    The same path asks for the same ports first, so re-running init is stable; another path
    gets others. A taken port moves the whole group on to the next slot.
    """
    digest = int(hashlib.sha256(str(folder.resolve()).encode()).hexdigest(), 16)
    for attempt in range(_PORT_SLOTS):
        base = _PORT_LOW + _PER_PROJECT * ((digest + attempt) % _PORT_SLOTS)
        candidates = list(range(base, base + _PER_PROJECT))
        if all(_is_free(port) for port in candidates):
            return ProjectPorts(*candidates)
    raise ConfigError(
        f"no {_PER_PROJECT} free ports in a row between {_PORT_LOW} and "
        f"{_PORT_LOW + _PER_PROJECT * _PORT_SLOTS}.",
        "Free some ports, or set redis.port, serving.port, orchestration.*_port and "
        "console.port by hand.",
    )


def _ports_in_settings(folder: Path) -> ProjectPorts | None:
    """The ports an existing maquette.yaml in `folder` names, if it names the first four (one
    written before the console or PostgreSQL had a port gets the first free one after the
    runner's, or the console's)."""
    try:
        found = yaml.safe_load((folder / "maquette.yaml").read_text()) or {}
        orchestration = found["orchestration"]
        runner = int(orchestration["runner_port"])
        console = (found.get("console") or {}).get("port")
        console = int(console) if console is not None else _first_free(runner + 1)
        postgres = orchestration.get("postgres_port")
        return ProjectPorts(
            int(found["redis"]["port"]),
            int(found["serving"]["port"]),
            int(orchestration["prefect_port"]),
            runner,
            console,
            # The settings' default: prefect_port + 3, the sixth port of the group.
            int(postgres) if postgres is not None else int(orchestration["prefect_port"]) + 3,
        )
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def _first_free(port: int) -> int:
    return next((p for p in range(port, port + 200) if _is_free(p)), port)


def user_lines(folder: Path) -> int:
    """Non-blank lines that are not comments in the project's settings, feature repo and SQL:
    what a user writes, or replaces, for a project like this one."""
    total = 0
    for pattern in _USER_FILES:
        for path in sorted(folder.glob(pattern)):
            comment = "--" if path.suffix == ".sql" else "#"
            lines = (line.strip() for line in path.read_text().splitlines())
            total += sum(1 for line in lines if line and not line.startswith(comment))
    return total


def _adapters(checkout: Path | None) -> dict[str, Path]:
    """flows/ and bentos/ of the Maquette checkout, or a ConfigError saying where they were
    looked for (a wheel install has no checkout)."""
    # The folder holding this maquette package: a checkout when installed with pip install -e.
    checkout = checkout or Path(__file__).resolve().parents[2]
    found = {part: checkout / part for part in ("flows", "bentos")}
    if missing := [str(path) for path in found.values() if not path.is_dir()]:
        raise ConfigError(
            f"cannot find {' and '.join(missing)} to copy into the project.",
            "Install Maquette from its checkout (`make install`, or `pip install -e` of the "
            "checkout: init copies its flows/ and bentos/), or copy flows/ and bentos/ from a "
            "checkout into the project by hand.",
        )
    return found


def _values(folder: Path, ports: ProjectPorts, example: bool) -> dict[str, str]:
    # Feast project names are letters, digits and underscores.
    name = re.sub(r"\W", "_", folder.name, flags=re.ASCII).strip("_").lower() or "project"
    models = (TEMPLATES / "models.yaml.tmpl").read_text()
    if not example:  # shown, commented out: the models to declare once data/ holds your tables
        models = "".join(f"# {line}\n" for line in models.splitlines())
    return {
        "name": folder.name,
        "feast_project": name if name[0].isalpha() else f"p_{name}",
        "redis_port": str(ports.redis),
        "serving_port": str(ports.serving),
        "prefect_port": str(ports.prefect),
        "runner_port": str(ports.runner),
        "console_port": str(ports.console),
        "postgres_port": str(ports.postgres),
        "models": models.rstrip("\n"),
    }


def _render(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], text)


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
