"""Cross-entropy losses and their closed-form gradients.

NumPy-first, with ``torch.nn.functional``'s names and semantics. See the README for the tour;
``crossentropy.torch`` holds the fused PyTorch backend (optional extra ``[torch]``).
"""

from .binary import binary_cross_entropy, binary_cross_entropy_with_logits
from .categorical import categorical_cross_entropy, cross_entropy, nll_loss
from .divergence import entropy, kl_div, kl_divergence
from .grad import value_and_grad
from .regression import mse_loss
from .special import log_sigmoid, log_softmax, logsumexp, sigmoid, softmax
from .tokens import TokenStats, token_stats, token_stats_vjp

__version__ = "0.1.0"

__all__ = [
    "TokenStats",
    "__version__",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "categorical_cross_entropy",
    "cross_entropy",
    "entropy",
    "kl_div",
    "kl_divergence",
    "log_sigmoid",
    "log_softmax",
    "logsumexp",
    "mse_loss",
    "nll_loss",
    "sigmoid",
    "softmax",
    "token_stats",
    "token_stats_vjp",
    "value_and_grad",
]
