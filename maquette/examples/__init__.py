"""Examples: datasets that show Maquette end to end. Nothing in the library imports them.

nycflights13   the demo: flights from New York in 2013, weather, planes, airlines
"""
