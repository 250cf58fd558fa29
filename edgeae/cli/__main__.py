"""`python -m edgeae.cli`: the same as the `edgeae` command."""
from . import main

main()
