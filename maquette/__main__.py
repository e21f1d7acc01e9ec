"""`python -m maquette`: the same as the `maquette` command."""

from maquette.cli import main

main()
