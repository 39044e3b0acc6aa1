"""Which column counts MKL sums in another order on this CPU, whether nmt.invariant's products
hold, and what each costs.

MKL picks a matrix product's kernel by its shapes and does not document where it switches;
kernels sum in different orders. ``nmt.invariant.linear`` runs ``nmt/fixed_order.c`` (one
order per inner width); ``padded_linear``, its fallback, forms ``weight @ x.T`` by MKL with
at least ``MIN_COLUMNS`` columns. For each weight shape this prints which column counts
(1-64 and some up to 600) give a column other bits than the same column of a 600-column
product (``raw_differs``: what MKL does), which row counts of ``linear`` and
``padded_linear`` differ from their 600-row results (``fixed_differs``, ``padded_differs``:
must be empty), and the median microseconds of F.linear, padded_linear and linear for 1,
5, 64 and 1000 rows (``us``). Exit 1 if any ``*_differs`` is not empty.

    python benchmarks/product_kernels.py [--threads 2]
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from ceiling import timed  # noqa: E402
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
        record = {"weight": [out_features, width], "raw_differs": [n for n in COUNTS if not torch.equal(
            torch.addmm(bias.unsqueeze(1), weight, x[:n].t()), wide[:, :n])]}
        for name, product in (("fixed", invariant.linear), ("padded", invariant.padded_linear)):
            whole = product(x, weight, bias)
            record[f"{name}_differs"] = [n for n in COUNTS if not torch.equal(
                product(x[-n:], weight, bias), whole[-n:])]
        record["us"] = {str(n): {name: round(statistics.median(timed(
            lambda: product(x[:n], weight, bias), 2000 // n + 5, torch.device("cpu"))) * 1e6, 1)
                                 for name, product in (("F.linear", torch.nn.functional.linear),
                                                       ("padded", invariant.padded_linear),
                                                       ("fixed", invariant.linear))}
                        for n in (1, 5, 64, 1000)} if out_features * width >= 2 ** 16 else {}
        shapes.append(record)
    ok = not any(s["fixed_differs"] or s["padded_differs"] for s in shapes)
    print(json.dumps({"benchmark": "product_kernels", "date": time.strftime("%Y-%m-%d"),
                      "machine": describe("cpu"), "torch": torch.__version__,
                      "threads": args.threads, "min_columns": invariant.MIN_COLUMNS,
                      "fixed_order_kernel": invariant.kernel() is not None,
                      "invariant_products_hold": ok, "shapes": shapes}, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
