"""``metrics.json``: every number the report shows, machine-readable."""

from __future__ import annotations

import math
from typing import Any

from ..experiments import DemoResults
from .sections import Section


def _num(x: float) -> float | None:
    """JSON has no NaN or infinity: those become ``null``."""
    return float(x) if math.isfinite(x) else None


def build_metrics(
    results: DemoResults, sections: list[Section], versions: dict[str, str], lang: str = "en"
) -> dict[str, Any]:
    """The ``metrics.json`` document (plain JSON types only). ``races`` lists the
    speed-selected runs, then the quality-selected ones (``selection``)."""
    r = results
    return {
        "settings": {
            "seed": r.settings.seed,
            "quick": r.settings.quick,
            "race_steps": r.race.steps,
            "learning_rate_grid": list(r.race.grid),
            "saturation": r.race.saturation,
            "neuron_steps": r.neuron.steps,
            "neuron_learning_rate": r.neuron.learning_rate,
        },
        "language": lang,
        "races": [
            {
                "experiment": run.experiment,
                "dataset": run.dataset,
                "init": run.init,
                "loss": run.loss,
                "selection": run.selection,
                "learning_rate": run.learning_rate,
                "target_accuracy": run.target_accuracy,
                "steps_to_target": run.steps_to_target,
                "final_accuracy": _num(run.final_accuracy),
                "final_log_loss": _num(run.final_log_loss),
                "grid": [
                    {
                        "learning_rate": t.learning_rate,
                        "steps_to_target": t.steps_to_target,
                        "final_val_accuracy": _num(t.final_val_accuracy),
                        "final_val_log_loss": _num(t.final_val_log_loss),
                    }
                    for t in run.trials
                ],
            }
            for run in (*r.race.runs, *r.race.quality_runs)
        ],
        "gradient_checks": [
            {
                "name": f"{c.name} vs {c.reference}",
                "formula": c.formula,
                "reference": c.reference,
                "max_abs_error": _num(c.max_abs_error),
                "max_abs_value": _num(c.max_abs_value),
                "relative_error": _num(c.relative_error),
            }
            for c in r.checks.checks
        ],
        "identities": [
            {
                "name": i.name,
                "statement": i.statement,
                "data": i.data,
                "lhs": _num(i.lhs),
                "rhs": _num(i.rhs),
                "abs_error": _num(i.abs_error),
            }
            for i in r.identities
        ],
        "gradient_anatomy": {
            "z_range": [float(r.anatomy.z[0]), float(r.anatomy.z[-1])],
            "points": int(r.anatomy.z.size),
            "fd_max_abs_error": {k: _num(v) for k, v in r.anatomy.fd_max_abs_error.items()},
            "wrong_saturated_grad": {
                "z": float(r.anatomy.z[0]),
                "y": 1.0,
                "mse": r.anatomy.at(float(r.anatomy.z[0]), 1.0)[0],
                "bce": r.anatomy.at(float(r.anatomy.z[0]), 1.0)[1],
            },
        },
        "saturated_neuron": [
            {
                "start": run.start,
                "w0": r.neuron.starts[run.start][0],
                "b0": r.neuron.starts[run.start][1],
                "loss": run.loss,
                "learning_rate": r.neuron.learning_rate,
                "steps_to_correct": run.steps_to_correct,
                "steps_to_close": run.steps_to_close,
                "final_output": _num(float(run.output[-1])),
            }
            for run in r.neuron.runs
        ],
        "neuron_grid": {
            "z0": list(r.grid.z0),
            "learning_rates": list(r.grid.learning_rates),
            "steps": r.grid.steps,
            "steps_to_correct": {
                loss: [[None if v < 0 else int(v) for v in row] for row in table]
                for loss, table in r.grid.steps_to_correct.items()
            },
        },
        "nielsen": [
            {
                "start": run.start,
                "w0": run.w0,
                "b0": run.b0,
                "loss": run.loss,
                "learning_rate": run.learning_rate,
                "initial_output": _num(float(run.output[0])),
                "final_output": _num(float(run.output[-1])),
                "initial_cost": _num(float(run.cost[0])),
                "final_cost": _num(float(run.cost[-1])),
                "epochs_to_drop_10_percent": run.epochs_to_drop,
                "fastest_epoch": run.steepest,
            }
            for run in r.nielsen.runs
        ],
        "cost_origin": {
            "targets": list(r.origin.targets),
            "b_range": [float(r.origin.b[0]), float(r.origin.b[-1])],
            "points": int(r.origin.b.size),
            "grad_minus_residual_max": _num(r.origin.grad_error),
            "grad_vs_finite_differences_max": _num(r.origin.fd_error),
            "integral_minus_loss_spread": {k: _num(v) for k, v in r.origin.constant_spread.items()},
        },
        "canonical_link": {
            "pairs": [
                {
                    "name": c.name,
                    "matched": c.matched,
                    "max_gap_to_residual": _num(c.max_gap),
                    "max_error_vs_finite_differences": _num(c.fd_error),
                }
                for c in r.links.checks
            ],
            "softmax_ce_hessian_error": _num(r.links.hessian_error),
        },
        "code_length": {
            "p": list(r.code.p),
            "q": list(r.code.q),
            "entropy": _num(r.code.entropy),
            "kl": _num(r.code.kl),
            "cross_entropy": _num(r.code.cross_entropy),
            "gap": _num(r.code.gap),
        },
        "hidden_layer": {
            "hidden_units": r.hidden.hidden,
            "samples": r.hidden.samples,
            "offsets": list(r.hidden.offsets),
            "mean_sigma_prime": [_num(float(v)) for v in r.hidden.mean_sigma_prime],
            "saturated_fraction": [_num(float(v)) for v in r.hidden.saturated],
            "hidden_grad_norm": {
                k: [_num(float(v)) for v in vals] for k, vals in r.hidden.hidden_grad.items()
            },
            "output_grad_norm": {
                k: [_num(float(v)) for v in vals] for k, vals in r.hidden.output_grad.items()
            },
            "learning_rate": r.hidden.learning_rate,
            "steps": r.hidden.steps,
            "runs": [
                {
                    "start": run.start,
                    "offset": run.offset,
                    "loss": run.loss,
                    "steps_to_target": run.steps_to_target,
                    "final_accuracy": _num(float(run.accuracy[-1])),
                    "w1_relative_change": _num(run.w1_change),
                }
                for run in r.hidden.runs
            ],
            "gradient_vs_finite_differences": _num(r.hidden.fd_error),
        },
        "verdicts": [
            {"section": s.key, "title": s.title, "status": s.status, "verdict": s.verdict}
            for s in sections
        ],
        "seconds": {k: round(v, 4) for k, v in r.seconds.items()},
        "versions": versions,
    }
