"""Prefect flows: thin wrappers whose tasks call the maquette API."""
