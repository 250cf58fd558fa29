"""`python -m edgeae.cli`: the same as the `edgeae` command."""
from edgeae.cli import main

main()
