"""Scores and embeddings of one partition's windows, on a worker.

- Results do not depend on partitioning. The runtime hands batch sizes to different graphs (as
  the export measured), whose scores differ by up to 1.6e-8; here every window goes through the
  one graph the runtime gives FIXED_BATCH windows, in batches of exactly that many (the last
  padded with copies of its first window), on the workers and in `reference_frame` alike. A
  window's score, and its flag, are the same however the fleet was partitioned.
- One model per worker process, verified: loaded once with one onnxruntime thread (one worker
  process per core; the default thread pool doubled the CPU time), and refused where its
  manifest checksum is not the one the driver read.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from edgeae.contract.errors import IntegrityError, UsageError, require
from edgeae.fleet.windows import FleetJob, cut_partition, window_index
from edgeae.runtime import EdgeModel, load
from edgeae.runtime.inputs import as_windows
from edgeae.runtime.routes import DEFAULT_CHUNK
from edgeae.runtime.scoring import reconstruction_error

FIXED_BATCH = DEFAULT_CHUNK  # every session.run gets exactly this many windows

_MODELS: dict[tuple[str, str, str], EdgeModel] = {}
_MODELS_LOCK = threading.Lock()


def worker_model(job: FleetJob) -> EdgeModel:
    """This process's model for `job`: loaded once, one onnxruntime thread, its checksum the driver's."""
    key = (job.export, job.checksum, job.variant)
    with _MODELS_LOCK:
        if key not in _MODELS:
            edge = load(job.export, "cpu", threads=1, variant=job.variant)
            found = edge.manifest.checksum or ""
            if found != job.checksum:
                raise IntegrityError(f"{job.export}: manifest checksum {found[:12]}… on this worker, the run started "
                                     f"with {job.checksum[:12]}… (the export changed, or differs on this machine)")
            _MODELS[key] = edge
        return _MODELS[key]


def role_model(edge: EdgeModel, role: str) -> Any:
    """The export's model for `role` (autoencoder or encoder), refused where its variant has none."""
    if role not in edge.models:
        raise UsageError(f"this export's {edge.variant} variant has no {role}")
    return edge.models[role]


def run_fixed(edge: EdgeModel, role: str, windows: np.ndarray) -> np.ndarray:
    """`role`'s output for each window, FIXED_BATCH windows per call through one graph (the last
    batch padded), so that no window's numbers depend on how many windows came with it."""
    graph = role_model(edge, role).graph_for(FIXED_BATCH)
    if not len(windows):
        return graph.run_windows(windows)
    windows, _ = as_windows(windows, edge.timesteps, edge.features)
    parts = []
    for start in range(0, len(windows), FIXED_BATCH):
        part = windows[start:start + FIXED_BATCH]
        count = len(part)
        if count < FIXED_BATCH:
            part = np.concatenate([part, np.repeat(part[:1], FIXED_BATCH - count, axis=0)])
        parts.append(graph.run_windows(part, FIXED_BATCH)[:count])
    return np.concatenate(parts)


def fixed_scores(edge: EdgeModel, windows: np.ndarray) -> np.ndarray:
    """Scores as EdgeModel.score computes them, from run_fixed's reconstructions."""
    if not len(windows):
        return np.empty(0)
    return reconstruction_error(windows, run_fixed(edge, "autoencoder", windows), edge.scale)


def score_partition(frame: Any, job: FleetJob) -> Any:
    """One partition of whole series -> a row per window: series, start, end, score, anomaly, missing.
    A missing window (one holding a missing value) is not scored: score NaN, anomaly NA."""
    pd = require("pandas", "dask")
    cut = cut_partition(frame, job)
    result = window_index(cut, job)
    scores = np.full(len(cut.first), np.nan)
    scores[~cut.missing] = fixed_scores(worker_model(job), cut.windows[~cut.missing])
    result["score"] = scores
    if job.threshold is not None:
        flags = pd.array(scores > job.threshold, dtype="boolean")
        flags[cut.missing] = pd.NA
        result["anomaly"] = flags
    result["missing"] = cut.missing
    return result


def encode_partition(frame: Any, job: FleetJob) -> Any:
    """One partition of whole series -> a row per window: series, start, end, embedding_0..n (NaN for
    a missing window, which is not run), missing."""
    pd = require("pandas", "dask")
    cut = cut_partition(frame, job)
    found = run_fixed(worker_model(job), "encoder", cut.windows[~cut.missing])
    embedding = np.full((len(cut.first), found.shape[1]), np.nan, found.dtype)
    embedding[~cut.missing] = found
    columns = pd.DataFrame(embedding, columns=[f"embedding_{i}" for i in range(embedding.shape[1])])
    return pd.concat([window_index(cut, job), columns], axis=1).assign(missing=cut.missing)
