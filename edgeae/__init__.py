"""edgeae: a Keras LSTM sequence autoencoder, from training to an edge device.

The public API, in pipeline order::

    import edgeae
    training = edgeae.train(edgeae.TrainConfig(epochs=300))      # Keras ([train] extra)
    edgeae.export(training, "exported")                          # tf2onnx, parity, variants
    model = edgeae.load("exported")                              # numpy + onnxruntime only
    result = model.score(windows)                                # a ScoreResult: scores, flags

Importing the package is cheap: each name below loads its module on first use, so
`import edgeae` loads neither onnxruntime nor TensorFlow, and `edgeae.load` never loads
TensorFlow, Keras or tf2onnx.
"""
from __future__ import annotations

import importlib
from typing import Any

from edgeae.contract.errors import EdgeAEError
from edgeae.contract.versions import __version__

# Each public name -> the module that defines it, imported when the name is first used.
_PUBLIC = {
    "load": "edgeae.runtime", "EdgeModel": "edgeae.runtime", "ScoreResult": "edgeae.runtime",
    "StreamScorer": "edgeae.runtime.streaming",
    "TrainConfig": "edgeae.trainer.model", "train": "edgeae.trainer.training", "Training": "edgeae.trainer.training",
    "export": "edgeae.exporter.publish", "export_keras": "edgeae.exporter.publish", "optimize": "edgeae.exporter.publish",
    "ExportOptions": "edgeae.exporter.options", "UserModelOptions": "edgeae.exporter.options",
    "verify": "edgeae.verifier.verification",
}

__all__ = ["EdgeAEError", "__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'edgeae' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
