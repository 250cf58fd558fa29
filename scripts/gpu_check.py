"""The CUDA checks, in one run, for a machine with an NVIDIA GPU and only numpy + onnxruntime-gpu.

Run from the project root:  python3 scripts/gpu_check.py [EXPORT_DIR]
It verifies parity of the export against the Keras outputs stored at export time, on the
CUDA execution provider, for the default models and every published variant, and prints
which provider each node actually ran on. Exit 0 only if every check passed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeae import runtime
from edgeae.runtime.providers import available_providers  # noqa: E402
from edgeae.runtime.session import placement_summary  # noqa: E402
from edgeae.verifier import verification  # noqa: E402
from edgeae.contract.errors import EdgeAEError  # noqa: E402
from edgeae.contract.layout import MANIFEST_FILE  # noqa: E402


def main(folder: Path) -> int:
    print("onnxruntime providers:", available_providers())
    try:
        report = verification.verify(folder, providers="cuda", against="stored")
    except EdgeAEError as exc:
        print(f"error: {exc}")
        return exc.exit_code
    for line in report.lines():
        print(line)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    for variant in ("fp32", *sorted(manifest.get("variants", {}).get("autoencoder", {}))):
        model = runtime.load(folder, "cuda", variant=variant)
        for role, placement in model.node_placement().items():
            counts = placement_summary(placement)
            lstm = {n: p for n, p in placement.items() if "LSTM" in n}
            print(f"{variant} {role}: {counts}; LSTM nodes: {lstm}")
    print("parity on CUDA:", "passed" if report else "FAILED")
    return 0 if report else 6


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "exported")))
