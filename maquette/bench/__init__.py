"""Bench: benchmarks that run the stock way, Maquette and the floor in one run.

May import: everything below the CLI.
"""
