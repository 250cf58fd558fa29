"""A fleet's history on a Dask cluster: every window scored or embedded, and a training sample,
with the numbers one process gives.

By job: `options` (what a command is asked to do), `source` (the data found, read, checked and
bound to an export), `windows` (each partition's windows, never across a series or a gap),
`missing` (gaps refused, kept as missing windows or filled), `scoring` (fixed batches through one
graph, one verified model per worker), `cluster` (the Dask client), `dataset` (lazy frames, the one-process reference, a published Parquet run), `record`
(a run's manifest.json), `sample` (the training sample) and `bench`.

Dask, pandas, pyarrow and fsspec (the `edgeae[dask]` extra) are imported only when a function
needs them: importing edgeae.fleet, edgeae.runtime or edgeae.cli never pulls them in.
"""
from edgeae.fleet.bench import run_fleet_bench, synthetic_fleet
from edgeae.fleet.cluster import ClusterError, connect
from edgeae.fleet.dataset import encode_dataset, reference_frame, run_dataset, score_dataset
from edgeae.fleet.options import FleetOptions, SampleOptions
from edgeae.fleet.record import FLEET_DISTRIBUTIONS
from edgeae.fleet.sample import Sample, sample_windows, write_sample

__all__ = ["FLEET_DISTRIBUTIONS", "ClusterError", "FleetOptions", "Sample", "SampleOptions", "connect",
           "encode_dataset", "reference_frame", "run_dataset", "run_fleet_bench", "sample_windows", "score_dataset",
           "synthetic_fleet", "write_sample"]
