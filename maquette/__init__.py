"""Maquette: Uber's Michelangelo workflow on one machine (Feast, Prefect, BentoML, Evidently)."""
