"""A new project folder: `maquette init DIR [--example]` and its Python API.

- `scaffold`: `init_project` writes maquette.yaml, feature_repo/, features_sql/, flows/, bentos/
  and .gitignore from the templates in `templates/` (package data), with ports chosen for the
  project; `user_lines` counts the lines a user writes for it.
- `example_data`: the `--example` dataset, generated: a small ratings shop with integer keys.

May import: config and errors (it writes files; it runs nothing of the platform). It sits just
below `cli`, which is its only user.
"""

from maquette.project.scaffold import InitResult, ProjectPorts, init_project, user_lines

__all__ = ["InitResult", "ProjectPorts", "init_project", "user_lines"]
