"""A tiny language model parallelised the torchtitan way, trained a few steps with our loss on
DTensor logits, against the same model on one process with ``F.cross_entropy``.

- 2 ranks, a 1-D tensor-parallel mesh: the output layer ``ColwiseParallel(output_layouts=
  Shard(-1), use_local_output=False)``, so the logits reach the loss sharded over the
  vocabulary; class weights with ignored targets and label smoothing (the options
  ``loss_parallel`` cannot take together);
- 4 ranks, a 2 x 2 (data x tensor) mesh: the same plan on the tensor-parallel dimension and
  ``fully_shard`` (FSDP2) over the data-parallel one, each data-parallel rank training on its
  half of the batch.

Every step's loss and, at the end, every parameter must equal the single-process run's to
float64 rounding. This file is also the worker: ``python tests/test_dtensor_training.py
--worker RANK WORLD PORT OUT``.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any

import pytest

from _spawn import finish_worker, init_group, spawn_group

torch = pytest.importorskip("torch")
pytest.importorskip("torch.distributed.tensor")

V, H, B, S, STEPS, LR = 29, 8, 4, 6, 3, 0.5
TOL = 1e-10


def _model() -> Any:
    nn = torch.nn

    class TinyLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(V, H)
            self.blocks = nn.ModuleList([nn.Linear(H, H) for _ in range(2)])
            self.output = nn.Linear(H, V, bias=False)

        def forward(self, tokens: Any) -> Any:
            x = self.embed(tokens)
            for block in self.blocks:
                x = x + torch.tanh(block(x))
            return self.output(x)

    torch.manual_seed(0)
    return TinyLM().double()


def _data() -> tuple[Any, Any, Any]:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, V, (B, S), generator=g)
    labels = torch.randint(0, V, (B, S), generator=g)
    labels[0, :2] = -100
    labels[3, 4] = -100
    weight = torch.rand(V, generator=g, dtype=torch.float64) + 0.5
    return tokens, labels, weight


def _reference(options: dict[str, Any], ignore: bool) -> tuple[list[float], dict[str, Any]]:
    """One process, ``F.cross_entropy`` on the whole batch."""
    import torch.nn.functional as F

    model = _model()
    tokens, labels, _ = _data()
    if not ignore:
        labels = labels.clamp(min=0)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    losses = []
    for _ in range(STEPS):
        logits = model(tokens)
        loss = F.cross_entropy(
            logits.flatten(0, 1), labels.flatten(), weight=options.get("weight"), **_plain(options)
        )
        losses.append(float(loss))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses, {k: v.detach() for k, v in model.named_parameters()}


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k != "weight"}


def _train(mesh_shape: tuple[int, ...], rank: int) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

    import crossentropy.torch as cet

    tokens, labels, weight = _data()
    if len(mesh_shape) == 1:
        mesh = init_device_mesh("cpu", mesh_shape, mesh_dim_names=("tp",))
        tp, dp = mesh["tp"], None
        options: dict[str, Any] = {"weight": weight, "label_smoothing": 0.1}
        ignore = True
    else:
        mesh = init_device_mesh("cpu", mesh_shape, mesh_dim_names=("dp", "tp"))
        tp, dp = mesh["tp"], mesh["dp"]
        options = {"label_smoothing": 0.1}
        ignore = False
        labels = labels.clamp(min=0)
    model = _model()
    plan = {"output": ColwiseParallel(output_layouts=Shard(-1), use_local_output=False)}
    parallelize_module(model, tp, plan)
    if dp is not None:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block, mesh=dp)
        fully_shard(model, mesh=dp)
        half = B // dp.size()
        lo = dp.get_local_rank() * half
        tokens, labels = tokens[lo : lo + half], labels[lo : lo + half]
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    losses = []
    for _ in range(STEPS):
        logits = model(tokens)  # a DTensor sharded over the vocabulary
        loss = cet.cross_entropy(logits.flatten(0, 1), labels.flatten(), **options)
        value = loss.full_tensor()
        if dp is not None:  # the global loss: the data-parallel ranks' mean
            value = value.detach().clone()
            torch.distributed.all_reduce(value, group=dp.get_group())
            value /= dp.size()
        losses.append(float(value))
        opt.zero_grad()
        loss.backward()
        opt.step()
    params = {}
    for name, p in model.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        params[name] = full.detach()
    ref_losses, ref_params = _reference(options, ignore)
    return {
        "loss_errors": [abs(a - b) for a, b in zip(losses, ref_losses, strict=True)],
        "param_errors": {k: float((params[k] - ref_params[k]).abs().max()) for k in ref_params},
        "logits_type": type(logits).__name__,
        "placements": str(tuple(logits.placements)),
    }


def _worker(rank: int, world: int, port: int, out: Path) -> None:
    init_group(rank, world, port, 60.0)
    try:
        res = _train((2,) if world == 2 else (2, 2), rank)
    except Exception:
        res = {"crash": traceback.format_exc()}
    finish_worker(out, {"rank": rank, **res})


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_training_steps_equal_the_single_process_run(world: int, tmp_path: Path) -> None:
    for res in spawn_group(__file__, world, tmp_path, 300.0):
        assert "crash" not in res, res["crash"]
        assert res["logits_type"] == "DTensor" and "Shard(dim=2)" in res["placements"], res
        assert max(res["loss_errors"]) <= TOL, res
        assert max(res["param_errors"].values()) <= TOL, res


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--worker":
    _rank, _world, _port = (int(v) for v in sys.argv[2:5])
    _worker(_rank, _world, _port, Path(sys.argv[5]) / f"rank{_rank}.json")
