"""Exit 1 unless two wheels hold the same files with the same contents (their RECORD hashes), naming
every difference: the wheel built from the sdist must be the wheel built from the checkout."""
from __future__ import annotations

import csv
import io
import sys
import zipfile


def contents(path: str) -> dict[str, str]:
    """Each file of the wheel (RECORD itself left out: it holds no hash of its own) -> its sha256."""
    with zipfile.ZipFile(path) as wheel:
        record = next(name for name in wheel.namelist() if name.endswith(".dist-info/RECORD"))
        rows = csv.reader(io.StringIO(wheel.read(record).decode("utf-8")))
        return {name: digest for name, digest, *_ in rows if name != record}


def main(first: str, second: str) -> int:
    a, b = contents(first), contents(second)
    differences = [f"only in {first}: {n}" for n in sorted(a.keys() - b.keys())]
    differences += [f"only in {second}: {n}" for n in sorted(b.keys() - a.keys())]
    differences += [f"differs: {n}" for n in sorted(a.keys() & b.keys()) if a[n] != b[n]]
    for line in differences:
        print(line)
    print(f"same wheel: {len(a)} files" if not differences else f"{len(differences)} differences")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
