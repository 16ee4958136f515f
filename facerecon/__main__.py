"""``python -m facerecon`` runs the command line."""

from facerecon.cli import main

main()
