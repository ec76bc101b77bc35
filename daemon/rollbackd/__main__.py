"""``python -m rollbackd`` runs the command line."""

from rollbackd.cli import main

main()
