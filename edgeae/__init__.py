"""edgeae: a Keras LSTM sequence autoencoder, from training to an edge device.

Importing the package is cheap: TensorFlow, Keras and tf2onnx load only inside the
functions that need them, and `edgeae.runtime` never loads them at all.
"""
from __future__ import annotations

# The one place the version is written: pyproject.toml reads it from here (setuptools' `attr`),
# so the wheel's metadata, `importlib.metadata.version("edgeae")` and `edgeae --version` agree.
__version__ = "0.2.0"

__all__ = ["__version__"]
