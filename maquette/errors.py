"""Maquette's exceptions. Each one says what was wrong and what to do about it.

MaquetteError                 base: `.remedy` says what to do; the CLI exits non-zero with both
├── ConfigError               maquette.yaml or MAQUETTE_* variables are invalid
│   └── DataError             a source's data does not match what maquette.yaml declares
├── StoreUnavailable          Redis cannot be reached or started
├── DataNotLoaded             the offline store or Feast registry is empty: run the named command
├── FeatureNotFound           unknown feature, feature view or feature service (lists what exists)
├── InvalidEntityFrame        an entity frame or entity rows lack keys, timestamps or time zones
├── ModelVersionNotFound      unknown model name, version or alias
└── ComponentFailed           a platform component (`maquette up`) did not start or answer
"""

from __future__ import annotations


class MaquetteError(Exception):
    """Base class: a message saying what went wrong and a remedy saying what to do."""

    exit_code = 1

    def __init__(self, message: str, remedy: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def __str__(self) -> str:
        return f"{self.message}\n  -> {self.remedy}" if self.remedy else self.message


class ConfigError(MaquetteError):
    """maquette.yaml or a MAQUETTE_* variable holds something invalid."""

    exit_code = 2


class DataError(ConfigError):
    """A source's data does not match what maquette.yaml declares: a time column that does not
    parse in its unit or zone, or column names that differ only by case."""


class InvalidModelSpec(ConfigError):
    """A model spec cannot be trained as written (column, window, search space)."""


class StoreUnavailable(MaquetteError):
    """Redis (or another store) cannot be reached or started."""

    exit_code = 3


class DataNotLoaded(MaquetteError):
    """The offline store or the Feast registry has not been built yet."""

    exit_code = 4


class FeatureNotFound(MaquetteError):
    """An unknown feature, feature view or feature service was named."""

    exit_code = 5


class InvalidEntityFrame(MaquetteError):
    """Entity rows or an entity frame lack a key, a timestamp column, or a time zone."""

    exit_code = 6


class ModelVersionNotFound(MaquetteError):
    """An unknown model name, version or alias was named."""

    exit_code = 7


class ComponentFailed(MaquetteError):
    """A platform component exited or did not answer its health check while starting."""

    exit_code = 8
