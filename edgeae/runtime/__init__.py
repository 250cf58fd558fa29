"""What applications and edge devices run: numpy + onnxruntime, nothing else.

Load an exported model set (a folder with a manifest, checked file by file) or a single
`.onnx` file, choose execution providers honestly, check every input before onnxruntime
sees it, and run in bounded chunks. No module of this package may import TensorFlow, Keras,
tf2onnx, onnx or click: a test proves it.

By job: providers (execution providers, threads), inputs (input checks), session (one
onnxruntime session), routes (what the manifest says runs where), scoring (a model set and
its scores), loading (load, the golden self-check), streaming (scoring row by row).
"""
from edgeae.runtime.loading import SelfCheckError, load
from edgeae.runtime.scoring import Drift, EdgeModel, ScoreResult

__all__ = ["Drift", "EdgeModel", "ScoreResult", "SelfCheckError", "load"]
