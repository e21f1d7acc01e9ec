"""Monitoring: how served models do once labels arrive.

Owns ingesting labels and joining them with logged predictions (`labels`), live metrics,
Evidently drift and quality reports (`drift`), training/serving skew (`skew`), freshness,
alerts (`alerts`), the monitoring index page, and one monitoring pass (`monitor`).

May import: `maquette.serving`, `maquette.training`, `maquette.registry`, `maquette.features`,
`maquette.data`, `maquette.config`, `maquette.errors`.
"""
