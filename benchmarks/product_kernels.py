"""Which column counts MKL sums in another order on this CPU, and whether nmt.invariant.linear holds.

MKL picks a matrix product's kernel by its shapes and does not document where it switches;
kernels sum in different orders. ``nmt.invariant.linear`` forms ``weight @ x.T`` with at
least ``MIN_COLUMNS`` columns, so that every sentence's column is summed by one kernel.
For each weight shape this prints which column counts (1-64 and some up to 600) give a
column other bits than the same column of a 600-column product (``raw_differs``: what
MKL does), and which row counts of ``invariant.linear`` differ from its 600-row result
(``linear_differs``: must be empty). Exit 1 if any ``linear_differs`` is not empty.

    python benchmarks/product_kernels.py [--threads 2]
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from machine import describe  # noqa: E402
from nmt import invariant  # noqa: E402

SHAPES = ((3, 8), (64, 32), (1024, 256), (256, 768), (2048, 512), (8000, 256), (4096, 1024),
          (96, 1100))
COUNTS = list(range(1, 65)) + [100, 255, 256, 257, 599]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    shapes = []
    for out_features, width in SHAPES:
        weight = torch.randn(out_features, width, generator=g)
        bias = torch.randn(out_features, generator=g)
        x = torch.randn(600, width, generator=g)
        wide = torch.addmm(bias.unsqueeze(1), weight, x.t())
        whole = invariant.linear(x, weight, bias)
        shapes.append({
            "weight": [out_features, width],
            "raw_differs": [n for n in COUNTS if not torch.equal(
                torch.addmm(bias.unsqueeze(1), weight, x[:n].t()), wide[:, :n])],
            "linear_differs": [n for n in COUNTS if not torch.equal(
                invariant.linear(x[-n:], weight, bias), whole[-n:])]})
    ok = not any(s["linear_differs"] for s in shapes)
    print(json.dumps({"benchmark": "product_kernels", "date": time.strftime("%Y-%m-%d"),
                      "machine": describe("cpu"), "torch": torch.__version__,
                      "threads": args.threads, "min_columns": invariant.MIN_COLUMNS,
                      "invariant_linear_holds": ok, "shapes": shapes}, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
