"""The `edgeae` command: click commands over the Python API (app: the group and its error table;
options and render: what commands share; build: training side; run: the device runtime side)."""
from . import build, fleet, microcontroller, run  # noqa: F401  (each module registers its commands on the group)
from .app import describe_failure, main

__all__ = ["describe_failure", "main"]
