"""edgeae: a Keras LSTM sequence autoencoder, from training to an edge device.

Importing the package is cheap: TensorFlow, Keras and tf2onnx load only inside the
functions that need them, and `edgeae.runtime` never loads them at all.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgeae")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
