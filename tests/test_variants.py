"""The variant table is one table: the runtime reads it without onnx, and each built row has one builder."""
import subprocess
import sys

from edgeae.runtime import loading
from edgeae.contract import variants
from edgeae.conversion.graphs import BUILDERS


def test_every_built_variant_has_one_builder_and_no_other_has_one():
    assert set(BUILDERS) == set(variants.BUILT)
    assert {spec.name for spec in variants.SPECS if not spec.built} == {"plain", "fp32"}


def test_the_runtime_self_checks_what_the_table_says():
    assert loading.SELF_CHECKED is variants.SELF_CHECKED
    assert set(variants.SELF_CHECKED) == {"fp16", "int8", "int8-dynamic"}
    assert loading.DEFAULT_VARIANT == variants.DEFAULT_VARIANT == "fp32"


def test_the_table_imports_no_onnx_and_no_builder():
    code = ("import sys, edgeae.contract.variants; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'onnx' or m.startswith('edgeae.conversion.graphs')))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
