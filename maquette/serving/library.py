"""Library mode: a registered model with the server's feature and partition logic, in process.

`maquette.load_model("NAME@ALIAS").predict(rows)` answers exactly as POST /predict does (the
same `Predictor`), without a server and, by default, without logging the predictions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from maquette.config import Settings, load_settings
from maquette.serving.predictor import Predictor
from maquette.serving.scoring import Prediction


class LibraryModel:
    """Library deployment: `maquette.load_model("NAME@production").predict(rows)`."""

    def __init__(self, settings: Settings, selector: str, log: bool = False) -> None:
        # Any registered version, promoted or not: library mode runs the user's own code.
        self.predictor = Predictor(settings, log=log, any_version=True)
        self.selector = selector
        self.tag = self.predictor.resolve(selector)
        self.predictor.version(self.tag)

    def predict(
        self, rows: list[dict[str, Any]], as_of: datetime | None = None
    ) -> list[Prediction]:
        return self.predictor.predict(rows, self.selector, as_of)


def load_model(selector: str, settings: Settings | None = None, log: bool = False) -> LibraryModel:
    """A registered model with Maquette's feature and partition logic, for in-process use."""
    return LibraryModel(settings or load_settings(), selector, log)
