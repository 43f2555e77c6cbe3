"""Language-model losses on CPU: per-token statistics, z-loss and softcap, fwd+bwd.

Usage: ``python benchmarks/bench_lm.py [--quick] [--only {tokens,options}] [--repeats R]``;
writes ``benchmarks/results/lm.md`` (``make bench`` runs it through ``run_all.py``).

Cases, each against the plain torch composition a user would write:

- ``tokens``: ``cet.linear_token_stats(hidden, weight, target)`` and the RL loss
  ``-(adv * out.logprob).mean() - 0.01 * out.entropy.mean()``, backward to ``hidden`` and
  ``weight``, vs ``logits = hidden @ weight.T``, ``log_softmax``, ``gather`` and the entropy
  ``-(p * logp).sum(-1)`` with autograd. Fp32 (N, D, V) = (4096, 1024, 32768).
- ``options``: ``cet.cross_entropy(x, y, z_loss=1e-4, softcap=30.0)`` at (8192, 32768) and
  ``cet.linear_cross_entropy(h, W, y, z_loss=1e-4, softcap=30.0)`` at (4096, 1024, 32768),
  vs ``x' = 30 tanh(x / 30)``, ``F.cross_entropy(x', y, reduction='none')
  + 1e-4 logsumexp(x')**2``, ``.mean()`` (on ``h @ W.T`` for the linear form). Skipped, with
  a note, while this version of ``crossentropy.torch`` lacks the keywords.

Times: medians of interleaved runs in one process (``_harness.interleaved_times``), with
``torch.set_num_threads(2)``; the lazy first-call work is done beforehand on a smaller problem
(the correctness check), so no full-size warm-up run is spent. Peak memory: one fwd+bwd in a
fresh subprocess per implementation, above the inputs, counting the returned gradients
(``_harness.peak_memory_above_inputs``). Correctness: loss and gradients of every
implementation against the float64 composition on a smaller problem of the same kind.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    MiB,
    interleaved_times,
    machine_line,
    markdown_table,
    median,
    peak_memory_above_inputs,
    write_result,
)
from bench_torch import _cpu_ticks, _others_load

import crossentropy.torch as cet
from crossentropy.torch import _kernels as K

HERE = Path(__file__).resolve().parent
THREADS = 2
BETA = 0.01  # entropy bonus of the RL loss
Z_LOSS = 1e-4  # PaLM's z-loss
SOFTCAP = 30.0  # Gemma 2's final_logit_softcapping
OPTIONS = ("z_loss", "softcap")

Inputs = tuple[torch.Tensor, ...]


# --------------------------------------------------------------------------- implementations
# Each takes leaf tensors and returns a 0-d loss; the first ``DIFF[case]`` inputs require grad.


def tokens_ours(
    h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, adv: torch.Tensor
) -> torch.Tensor:
    out = cet.linear_token_stats(h, w, t)
    return -(adv * out.logprob).mean() - BETA * out.entropy.mean()


def tokens_naive(
    h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, adv: torch.Tensor
) -> torch.Tensor:
    logits = h @ w.T
    logp = torch.log_softmax(logits, dim=-1)
    logprob = logp.gather(-1, t.unsqueeze(-1)).squeeze(-1)
    p = logp.exp()
    entropy = -(p * logp).sum(-1)
    return -(adv * logprob).mean() - BETA * entropy.mean()


def plain_options(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The z-loss + softcap cross-entropy, spelled out in torch ops."""
    xc = SOFTCAP * torch.tanh(x / SOFTCAP)
    per_row = F.cross_entropy(xc, t, reduction="none") + Z_LOSS * torch.logsumexp(xc, -1) ** 2
    return per_row.mean()


def ce_ours(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return cet.cross_entropy(x, t, z_loss=Z_LOSS, softcap=SOFTCAP)  # type: ignore[call-arg]


def ce_ours_no_options(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return cet.cross_entropy(x, t)


def linear_ours(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return cet.linear_cross_entropy(h, w, t, z_loss=Z_LOSS, softcap=SOFTCAP)  # type: ignore[call-arg]


def linear_plain(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return plain_options(h @ w.T, t)


OURS_TOKENS = "crossentropy.torch.linear_token_stats"
OURS_CE = "crossentropy.torch.cross_entropy(z_loss=1e-4, softcap=30.0)"
OURS_LINEAR = "crossentropy.torch.linear_cross_entropy(z_loss=1e-4, softcap=30.0)"
IMPLS: dict[str, dict[str, Callable[..., torch.Tensor]]] = {
    "tokens": {
        OURS_TOKENS: tokens_ours,
        "naive: h @ W.T, log_softmax, gather, -(p * logp).sum(-1)": tokens_naive,
    },
    "ce": {
        OURS_CE: ce_ours,
        "plain: 30 tanh(x/30), F.cross_entropy(none) + 1e-4 logsumexp²": plain_options,
        "reference: crossentropy.torch.cross_entropy without the options": ce_ours_no_options,
    },
    "linear": {
        OURS_LINEAR: linear_ours,
        "materialised: logits = h @ W.T, then the plain composition": linear_plain,
    },
}
DIFF = {"tokens": 2, "ce": 1, "linear": 2}  # how many leading inputs require grad


def make_inputs(case: str, sizes: Sequence[int], seed: int = 0) -> Inputs:
    """Float32 inputs of ``case`` at ``sizes`` (N, D, V) or (N, V), not requiring grad."""
    g = torch.Generator().manual_seed(seed)
    if case == "ce":
        n, v = sizes
        x = torch.randn(n, v, generator=g) * 4  # spread enough for the softcap to bend some
        return x, torch.randint(0, v, (n,), generator=g)
    n, d, v = sizes
    h = torch.randn(n, d, generator=g)
    w = torch.randn(v, d, generator=g) / d**0.5
    t = torch.randint(0, v, (n,), generator=g)
    if case == "tokens":
        return h, w, t, torch.randn(n, generator=g)
    return h, w, t


def leaves(case: str, inputs: Inputs) -> Inputs:
    k = DIFF[case]
    return tuple(a.detach().requires_grad_() if i < k else a for i, a in enumerate(inputs))


def step(case: str, fn: Callable[..., torch.Tensor], inputs: Inputs) -> Callable[[], None]:
    """One fwd+bwd of ``fn`` on fresh leaves of ``inputs``."""

    def run() -> None:
        fn(*leaves(case, inputs)).backward()

    return run


def missing_options(fn: Callable[..., object]) -> list[str]:
    params = inspect.signature(fn).parameters
    return [k for k in OPTIONS if k not in params]


# --------------------------------------------------------------------------- correctness


def _float64_reference(case: str, inputs: Inputs) -> tuple[float, list[torch.Tensor]]:
    ref = {"tokens": tokens_naive, "ce": plain_options, "linear": linear_plain}[case]
    k = DIFF[case]
    x64 = tuple(
        a.double().requires_grad_() if i < k else (a.double() if a.is_floating_point() else a)
        for i, a in enumerate(inputs)
    )
    loss = ref(*x64)
    grads = torch.autograd.grad(loss, x64[:k])
    return float(loss.detach()), list(grads)


def check(case: str, sizes: Sequence[int]) -> dict[str, tuple[float, float]]:
    """Per implementation: (relative loss error, max relative gradient error) vs float64.

    Each implementation runs twice here, which also warms up its lazily-initialised code.
    """
    inputs = make_inputs(case, sizes, seed=1)
    ref_loss, ref_grads = _float64_reference(case, inputs)
    errors = {}
    for name, fn in IMPLS[case].items():
        if case == "ce" and fn is ce_ours_no_options:
            continue  # another loss: nothing to compare with
        for _ in range(2):
            xs = leaves(case, inputs)
            loss = fn(*xs)
            grads = torch.autograd.grad(loss, xs[: DIFF[case]])
        loss_err = abs(float(loss.detach()) - ref_loss) / max(abs(ref_loss), 1e-30)
        grad_err = max(
            float((g.double() - r).abs().max() / r.abs().max().clamp(min=1e-30))
            for g, r in zip(grads, ref_grads, strict=True)
        )
        errors[name] = (loss_err, grad_err)
    return errors


# --------------------------------------------------------------------------- measuring

_SETUP = """
import sys
sys.path.insert(0, {here!r})
import torch
import bench_lm as B
torch.set_num_threads(B.THREADS)
fn = B.IMPLS[{case!r}][{name!r}]
for _ in range(2):  # the lazy first-call work, on a small problem
    fn(*B.leaves({case!r}, B.make_inputs({case!r}, {small!r}))).backward()
xs = B.leaves({case!r}, B.make_inputs({case!r}, {sizes!r}))
"""
_RUN = """
loss = fn(*xs)
loss.backward()
"""


def peak(case: str, name: str, sizes: Sequence[int], small: Sequence[int]) -> int:
    setup = _SETUP.format(
        here=str(HERE), case=case, name=name, sizes=tuple(sizes), small=tuple(small)
    )
    return peak_memory_above_inputs(setup, _RUN)


def measure(
    case: str, sizes: Sequence[int], small: Sequence[int], repeats: int
) -> tuple[dict[str, float], dict[str, int], dict[str, tuple[float, float]]]:
    """(median seconds, peak bytes above inputs, errors vs float64) per implementation."""
    errors = check(case, small)  # also the warm-up
    inputs = make_inputs(case, sizes)
    fns = {name: step(case, fn, inputs) for name, fn in IMPLS[case].items()}
    start, ticks = time.perf_counter(), _cpu_ticks()
    times = interleaved_times(fns, repeats=repeats, warmup=0)
    LOAD[case] = _others_load(ticks, time.perf_counter() - start)
    meds = {name: median(ts) for name, ts in times.items()}
    peaks = {name: peak(case, name, sizes, small) for name in IMPLS[case]}
    return meds, peaks, errors


LOAD: dict[str, str] = {}  # per case: cores other processes kept busy while it was timed


def _load_line(case: str) -> str:
    return f"Other processes kept {LOAD.get(case, 'unknown')} busy on average while it was timed."


def _mib(nbytes: float) -> str:
    mib = nbytes / MiB
    return f"{mib:.0f}" if mib >= 10 else f"{mib:.2f}"


def _mark(ok: bool) -> str:
    return "**met**" if ok else "not met"


def _err(errors: dict[str, tuple[float, float]], name: str) -> str:
    if name not in errors:
        return "—"
    loss_err, grad_err = errors[name]
    return f"{loss_err:.1e} / {grad_err:.1e}"


def _table(
    meds: dict[str, float],
    peaks: dict[str, int],
    errors: dict[str, tuple[float, float]],
    ours: str,
    extra: tuple[str, int] | None = None,
) -> str:
    headers = ["implementation", "median s", "× ours", "peak above inputs (MiB)"]
    if extra is not None:
        headers.append(f"peak / {extra[0]}")
    headers.append("rel. error loss / grads vs float64 (smaller problem)")
    rows = []
    for name, sec in meds.items():
        row: list[object] = [
            name if name != ours else f"**{name}**",
            f"{sec:.3f}",
            f"{sec / meds[ours]:.2f}",
            _mib(peaks[name]),
        ]
        if extra is not None:
            row.append(f"{peaks[name] / extra[1]:.2f}")
        row.append(_err(errors, name))
        rows.append(row)
    return markdown_table(headers, rows)


def bench_tokens(
    sizes: tuple[int, int, int], small: tuple[int, int, int], repeats: int
) -> tuple[str, list[list[object]]]:
    n, d, v = sizes
    meds, peaks, errors = measure("tokens", sizes, small, repeats)
    chunk_rows = min(n, K.default_chunk_rows(v, 4))
    chunk_bytes = chunk_rows * v * 4
    grads_bytes = (n * d + v * d) * 4
    bound = grads_bytes + chunk_bytes
    table = _table(meds, peaks, errors, OURS_TOKENS, ("(grads + one chunk)", bound))
    naive = next(k for k in meds if k != OURS_TOKENS)
    ratio = meds[OURS_TOKENS] / meds[naive]
    ours_peak = peaks[OURS_TOKENS]
    case = f"linear_token_stats ({n}, {d}, {v})"
    targets: list[list[object]] = [
        [case, "≤ 1.0× naive (time)", f"{ratio:.2f}×", _mark(ratio <= 1.0)],
        [
            case,
            f"peak ≤ grads + one chunk = {_mib(grads_bytes)} + {_mib(chunk_bytes)} "
            f"= {_mib(bound)} MiB",
            f"{_mib(ours_peak)} MiB ({ours_peak / bound:.2f}×)",
            _mark(ours_peak <= bound),
        ],
    ]
    text = (
        f"### Per-token statistics: `linear_token_stats`, float32 (N, D, V) = ({n}, {d}, {v}), "
        "RL loss fwd+bwd (hidden, weight)\n\n"
        f"Loss `-(adv * out.logprob).mean() - {BETA} * out.entropy.mean()`, `adv` ~ N(0, 1) per "
        f"token. Chunk: `default_chunk_rows({v}, 4)` = {chunk_rows} rows of logits = "
        f"{_mib(chunk_bytes)} MiB; gradients `d hidden` + `d weight` = "
        f"{_mib(grads_bytes)} MiB; the logits alone would be {_mib(n * v * 4)} MiB. "
        f"{_load_line('tokens')}\n\n{table}\n"
    )
    return text, targets


def bench_options(
    ce_sizes: tuple[int, int],
    ce_small: tuple[int, int],
    lin_sizes: tuple[int, int, int],
    lin_small: tuple[int, int, int],
    repeats: int,
) -> tuple[str, list[list[object]]]:
    parts: list[str] = []
    targets: list[list[object]] = []
    n, v = ce_sizes
    missing = missing_options(cet.cross_entropy)
    title = f"### `cross_entropy(z_loss=1e-4, softcap=30.0)`, float32 logits ({n}, {v}), fwd+bwd"
    if missing:
        note = f"Skipped: `crossentropy.torch.cross_entropy` has no keyword {', '.join(missing)}."
        print("  " + note, flush=True)
        parts.append(f"{title}\n\n{note}\n")
    else:
        print(f"  cross_entropy with options ({n}, {v}) ...", flush=True)
        meds, peaks, errors = measure("ce", ce_sizes, ce_small, repeats)
        table = _table(meds, peaks, errors, OURS_CE, ("logits", n * v * 4))
        parts.append(f"{title}\n\n{_load_line('ce')}\n\n{table}\n")
        plain = list(meds)[1]
        r = meds[OURS_CE] / meds[plain]
        targets.append(
            [f"CE z_loss+softcap ({n}, {v})", "≤ 1.0× plain (time)", f"{r:.2f}×", _mark(r <= 1)]
        )
    n, d, v = lin_sizes
    missing = missing_options(cet.linear_cross_entropy)
    title = (
        f"### `linear_cross_entropy(z_loss=1e-4, softcap=30.0)`, float32 (N, D, V) = "
        f"({n}, {d}, {v}), fwd+bwd (hidden, weight)"
    )
    if missing:
        note = (
            "Skipped: `crossentropy.torch.linear_cross_entropy` has no keyword "
            f"{', '.join(missing)}."
        )
        print("  " + note, flush=True)
        parts.append(f"{title}\n\n{note}\n")
    else:
        print(f"  linear_cross_entropy with options ({n}, {d}, {v}) ...", flush=True)
        meds, peaks, errors = measure("linear", lin_sizes, lin_small, repeats)
        grads_bytes = (n * d + v * d) * 4
        table = _table(meds, peaks, errors, OURS_LINEAR, ("grads", grads_bytes))
        parts.append(f"{title}\n\n{_load_line('linear')}\n\n{table}\n")
        plain = list(meds)[1]
        r = meds[OURS_LINEAR] / meds[plain]
        targets.append(
            [
                f"linear CE z_loss+softcap ({n}, {d}, {v})",
                "≤ 1.0× materialised (time)",
                f"{r:.2f}×",
                _mark(r <= 1),
            ]
        )
    return "\n".join(parts), targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", choices=["tokens", "options"], help="run only one part")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed runs")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}")
    if args.quick:
        tokens, tokens_small = (128, 32, 1024), (64, 16, 512)
        ce, ce_small = (128, 2048), (64, 512)
        lin, lin_small = (128, 32, 1024), (64, 16, 512)
        repeats = 2
    else:
        tokens, tokens_small = (4096, 1024, 32768), (256, 256, 8192)
        ce, ce_small = (8192, 32768), (512, 8192)
        lin, lin_small = (4096, 1024, 32768), (256, 256, 8192)
        repeats = args.repeats
    sections, targets = [], []
    if args.only != "options":
        print(f"linear_token_stats {tokens} ...", flush=True)
        text, tg = bench_tokens(tokens, tokens_small, repeats)
        print(text, flush=True)
        sections.append(text)
        targets += tg
    if args.only != "tokens":
        print("z-loss and softcap ...", flush=True)
        text, tg = bench_options(ce, ce_small, lin, lin_small, repeats)
        print(text, flush=True)
        sections.append(text)
        targets += tg
    summary = markdown_table(["case", "target", "measured", "status"], targets)
    header = (
        "## Language-model losses (`crossentropy.torch`): per-token statistics, z-loss, "
        "softcap\n\n"
        f"Command: `python benchmarks/bench_lm.py`. {machine_line()}; torch {torch.__version__}, "
        f"`torch.set_num_threads({THREADS})`"
        f"{' — **quick mode: small sizes, targets not meaningful**' if args.quick else ''}"
        f"{f' — only `--only {args.only}`' if args.only else ''}. "
        f"Median of {repeats} interleaved fwd+bwd runs (the first-call work done beforehand on "
        "the smaller correctness problem); peak memory of one fwd+bwd in a fresh subprocess, "
        "above the inputs, counting the returned gradients. The machine is shared: ratios "
        "measured side by side are the numbers to trust.\n"
    )
    body = "\n".join([header, "### Targets\n", summary, "", *sections])
    path = write_result("lm", body)
    print(summary)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
