"""Entities: the keys features are looked up by."""

from feast import Entity, ValueType

# Airports play the role of Michelangelo's cities: weather and airport load are per origin.
origin = Entity(
    name="origin",
    join_keys=["origin"],
    value_type=ValueType.STRING,
    description="Departure airport (FAA code).",
)

tailnum = Entity(
    name="tailnum",
    join_keys=["tailnum"],
    value_type=ValueType.STRING,
    description="Aircraft tail number.",
)

carrier = Entity(
    name="carrier",
    join_keys=["carrier"],
    value_type=ValueType.STRING,
    description="Airline (two-letter code).",
)

route = Entity(
    name="route",
    join_keys=["route"],
    value_type=ValueType.STRING,
    description="Origin-destination pair, e.g. JFK-LAX.",
)
