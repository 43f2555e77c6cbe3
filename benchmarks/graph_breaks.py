"""Graph breaks per call of each public ``crossentropy.torch`` function under ``torch.compile``.

Usage: ``python benchmarks/graph_breaks.py`` (prints a markdown table). Counts come from
``torch._dynamo.explain`` on shapes large enough to take the fused kernels. To compare with an
older version, put its ``src`` first on the path: ``PYTHONPATH=<old checkout>/src python
benchmarks/graph_breaks.py``. ``tests/test_torch_conformance.py::test_zero_graph_breaks`` holds
the current version to zero.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch._dynamo

import crossentropy.torch as cet


def main() -> int:
    torch.manual_seed(0)
    n, v, d = 1024, 1024, 64  # 2^20 logits: above the direct-path threshold
    x = torch.randn(n, v, requires_grad=True)
    t = torch.randint(0, v, (n,))
    y = torch.softmax(torch.randn(n, v), dim=1)
    h = torch.randn(n, d, requires_grad=True)
    w = torch.randn(v, d, requires_grad=True)
    cw = torch.rand(v) + 0.5
    cases: dict[str, tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]] = {
        "cross_entropy": (lambda x, t: cet.cross_entropy(x, t), (x, t)),
        "cross_entropy(weight, label_smoothing)": (
            lambda x, t: cet.cross_entropy(x, t, cw, label_smoothing=0.1),
            (x, t),
        ),
        "cross_entropy(reduction='none')": (
            lambda x, t: cet.cross_entropy(x, t, reduction="none"),
            (x, t),
        ),
        "cross_entropy(probability target)": (lambda x, y: cet.cross_entropy(x, y), (x, y)),
        "linear_cross_entropy": (lambda h, w, t: cet.linear_cross_entropy(h, w, t), (h, w, t)),
    }
    print(f"torch {torch.__version__}; module: {cet.__file__}")
    print("| call | graphs | graph breaks |")
    print("|---|---|---|")
    for name, (fn, args) in cases.items():
        torch._dynamo.reset()
        explained = torch._dynamo.explain(fn)(*args)
        print(f"| `{name}` | {explained.graph_count} | {explained.graph_break_count} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
