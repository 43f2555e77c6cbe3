"""The article's claims as runnable experiments.

Every experiment uses only the core API (losses, their closed-form gradients via
``value_and_grad``, ``sigmoid``/``softmax``) and returns a plain frozen dataclass; nothing here
draws or prints — :mod:`crossentropy.report` renders the results.

1. :func:`gradient_anatomy` — :math:`\\partial L/\\partial z` of MSE and BCE under a sigmoid.
2. :func:`saturated_neuron` — one neuron started confidently wrong, trained both ways;
   :func:`neuron_grid` — the same for a grid of starts and learning rates (the sliders).
3. :func:`fair_race` — logistic / softmax regression on real data, each loss at its best
   learning rate.
4. :func:`derivation_checks` — the article's formulas vs finite differences and torch autograd.
5. :func:`identities` — cross-entropy = −log-likelihood / n (binary and categorical, against
   the labels), H(p, q) = H(p) + KL(p‖q), two-class softmax CE = BCE on the logit difference.

The teaching pieces (:mod:`.teaching`, :mod:`.hidden`): :func:`nielsen_neuron` (the single
neuron of Nielsen's chapter 3, both of his starts), :func:`cost_origin` (cross-entropy as the
integral of the gradient a − y), :func:`canonical_links` (the output + loss pairs whose gradient
is a − y), :func:`code_length` (one H(p, q) = H(p) + KL(p‖q) example for the draggable bars) and
:func:`hidden_layer` (what cross-entropy does not fix: a saturated hidden layer).

:func:`run_demo` runs them all for ``crossentropy demo``.
"""

from .anatomy import GradientAnatomy, gradient_anatomy
from .checks import DerivationChecks, GradientCheck, derivation_checks
from .demo import DemoResults, DemoSettings, identities_of, run_demo
from .hidden import HiddenLayer, HiddenRun, hidden_layer
from .identities import Identity, identities
from .neuron import NeuronGrid, NeuronRun, SaturatedNeuron, neuron_grid, saturated_neuron
from .race import Race, RaceRun, Trial, fair_race
from .teaching import (
    CanonicalLinks,
    CodeLength,
    CostOrigin,
    LinkCheck,
    NielsenNeuron,
    NielsenRun,
    canonical_links,
    code_length,
    cost_origin,
    nielsen_neuron,
)

__all__ = [
    "CanonicalLinks",
    "CodeLength",
    "CostOrigin",
    "DemoResults",
    "DemoSettings",
    "DerivationChecks",
    "GradientAnatomy",
    "GradientCheck",
    "HiddenLayer",
    "HiddenRun",
    "Identity",
    "LinkCheck",
    "NeuronGrid",
    "NeuronRun",
    "NielsenNeuron",
    "NielsenRun",
    "Race",
    "RaceRun",
    "SaturatedNeuron",
    "Trial",
    "canonical_links",
    "code_length",
    "cost_origin",
    "derivation_checks",
    "fair_race",
    "gradient_anatomy",
    "hidden_layer",
    "identities",
    "identities_of",
    "neuron_grid",
    "nielsen_neuron",
    "run_demo",
    "saturated_neuron",
]
