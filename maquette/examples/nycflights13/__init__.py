"""The demo dataset, nycflights13: its tables and feature SQL (`tables`), its stream of
departures and their windows (`stream`), what `maquette bench` needs beyond the settings
(`bench`: row offsets, the hand-written weather + plane floor).

A project points at it from `maquette.yaml` (`dataset.module`, `stream.definition`); the
library never imports it (`bench` is found beside `dataset.module`).
"""
