from maquette.cli import main

main()
