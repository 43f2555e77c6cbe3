"""Cross-entropy losses and their closed-form gradients.

NumPy-first, with ``torch.nn.functional``'s names and semantics. See the README for the tour;
``crossentropy.torch`` holds the fused PyTorch backend (optional extra ``[torch]``).
"""

from .grad import value_and_grad
from .special import log_sigmoid, log_softmax, logsumexp, sigmoid, softmax

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "log_sigmoid",
    "log_softmax",
    "logsumexp",
    "sigmoid",
    "softmax",
    "value_and_grad",
]
