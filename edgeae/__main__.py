"""`python -m edgeae`: the same as the `edgeae` command (where the console script is not on PATH)."""
from edgeae.cli import main

main()
