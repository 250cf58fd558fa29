"""The Dask cluster a fleet command runs on: a scheduler the user names, or a local one started
(and closed) for the run, with one thread per worker process."""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from edgeae.contract.errors import EXIT_RUNTIME, EdgeAEError, require


DASK_LOG_LEVEL = "DASK_LOGGING__DISTRIBUTED"  # dask config logging.distributed, read when a process imports it


class ClusterError(EdgeAEError, ConnectionError):
    """The Dask scheduler cannot be reached or the cluster cannot be started."""

    exit_code = EXIT_RUNTIME


@contextlib.contextmanager
def _quiet_dask_logs() -> Iterator[None]:
    """Dask's own log off while edgeae runs a cluster: a failed task raises its cause in the driver, which
    the CLI prints as its one error line, and the worker's 7-line "Compute Failed" report (a traceback) or
    the cluster's start-up lines must not precede it. The level goes to this process's loggers and, through
    the environment a local cluster's worker processes start with, to theirs; both are restored after."""
    logger = logging.getLogger("distributed")
    level, environ = logger.level, os.environ.get(DASK_LOG_LEVEL)
    logger.setLevel(logging.CRITICAL)
    os.environ[DASK_LOG_LEVEL] = "critical"
    try:
        yield
    finally:
        logger.setLevel(level)
        if environ is None:
            os.environ.pop(DASK_LOG_LEVEL, None)
        else:
            os.environ[DASK_LOG_LEVEL] = environ


@contextlib.contextmanager
def connect(scheduler: Any = None, workers: int | None = None) -> Iterator[Any]:
    """A Dask client: to `scheduler` (an address, or a Client, kept open), else to a local cluster
    of `workers` processes (default: one per core) with one thread each."""
    distributed = require("distributed", "dask")
    # The scheduler logs each shuffle's start and end as a warning: two lines per run that say nothing is wrong.
    logging.getLogger("distributed.shuffle").setLevel(logging.ERROR)
    if isinstance(scheduler, distributed.Client):
        yield scheduler
        return
    with _quiet_dask_logs():
        try:
            if scheduler is not None:
                client = distributed.Client(scheduler, timeout="10s")
            else:
                cluster = distributed.LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                                                   processes=True, dashboard_address=":0")
                client = distributed.Client(cluster)
        except (OSError, TimeoutError, RuntimeError) as exc:  # RuntimeError: a local worker process failed to start
            where = f"the Dask scheduler at {scheduler}" if scheduler is not None else "a local Dask cluster"
            raise ClusterError(f"cannot reach {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
                from None
        try:
            yield client
        finally:
            client.close()
            if scheduler is None:
                cluster.close()
