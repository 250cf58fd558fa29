"""The `edgeae` command: click commands over the Python API (app: the group and its error table;
options and render: what commands share; build: training side; run: the device runtime side)."""
from edgeae.cli import build
from edgeae.cli import fleet
from edgeae.cli import keys
from edgeae.cli import microcontroller
from edgeae.cli import quality
from edgeae.cli import run  # noqa: F401  (each module registers its commands on the group)
from edgeae.cli.app import describe_failure, main

__all__ = ["describe_failure", "main"]
