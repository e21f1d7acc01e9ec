"""`maquette build` makes a bento with the service, the package and the @production models (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from maquette.cli import app
from maquette.config import Settings


@pytest.mark.slow
def test_build_packs_the_production_models_and_the_package(
    production, loaded_project: Settings
) -> None:
    """The project folder holds no maquette/: the build ships the installed package itself."""
    import bentoml

    result = CliRunner().invoke(app, ["build", "--project", str(loaded_project.project_dir)])
    assert result.exit_code == 0, result.output
    bento = bentoml.bentos.get("maquette:latest")
    packed = {str(m.tag) for m in bento.info.models}
    assert set(production.values()) <= packed
    src = Path(bento.path) / "src"
    files = {p.relative_to(src).as_posix() for p in src.rglob("*.py")}
    assert "bentos/service.py" in files and "maquette/serving/predictor.py" in files
    assert not (loaded_project.project_dir / "maquette").exists()
    # The alias snapshot travels in the bento; the project's own folder is left as it was.
    assert (src / "bentos" / ".aliases.json").is_file()
    assert not (loaded_project.project_dir / "bentos" / ".aliases.json").exists()
