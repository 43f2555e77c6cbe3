# ruff: noqa: E501  (Chinese prose: ruff counts each CJK character as two columns)
"""Every word of the report, in English and in Chinese.

The Chinese text uses the article's own terms (交叉熵, 均方误差, 似然函数, 梯度消失) and is
written as Chinese, not translated word for word. Templates take their numbers as ``{...}``
fields; both languages must have exactly the same keys (a test holds them to it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LANGUAGES = ("en", "zh")

ARTICLE = {
    "title": "交叉熵损失函数",
    "title_en": "The cross-entropy loss function",
    "author": "tecwang",
    "site": "博客园 (cnblogs)",
    "year": 2020,
    "url": "https://www.cnblogs.com/tecwang/p/13256509.html",
}

EN: dict[str, str] = {
    # -- page frame -------------------------------------------------------------------------
    "html.lang": "en",
    "page.title": "Why cross-entropy beats MSE under a sigmoid — crossentropy demo",
    "page.h1": "Why cross-entropy beats MSE under a sigmoid",
    "page.cite": (
        "This page checks, by running code, the claims of the article "
        "<cite>《{title}》</cite> (“{title_en}”) by {author}, published on {site} in {year} "
        '— the article is in Chinese: <a href="{url}">{url}</a>.'
    ),
    "page.run": (
        "{mode} run, seed {seed}: {seconds} s of computation with crossentropy {version}. "
        "Every measured number and every curve below was computed in this run by the library; "
        "none is typed in by hand."
    ),
    "page.mode.quick": "A quick",
    "page.mode.full": "A full",
    "page.other_lang": "中文版",
    "page.other_lang_hint": "crossentropy demo --lang zh",
    "page.contents": "Contents",
    "page.claims": "What the article claims",
    "page.claims_intro": "The article makes four claims; each part of this page tests some of them.",
    "page.summary": "What this run measured",
    "page.glossary": "Glossary",
    "page.footer": (
        "Data: scikit-learn's bundled breast-cancer and digits sets (no download). All numbers "
        "are also in metrics.json beside this file; the figures are there as SVG files. "
        "Versions: {versions}."
    ),
    "page.part": "part",
    "page.verdict": "verdict",
    "page.measured": "measured in this run",
    "page.article_says": "The article",
    "page.measured_label": "Measured in this run:",
    "page.noscript": (
        "JavaScript is off: the figures above show the two starts of the table at η = {lr}. "
        "With JavaScript on, sliders let you choose the start and the learning rate here."
    ),
    "claim.1": "Two forms of one loss: binary cross-entropy for two classes, categorical "
    "cross-entropy for m classes (n samples).",
    "claim.2": "The log-likelihood of a sample and the cross-entropy have the same form: "
    "“the same face, different origins” — and “different roads to the same end”: "
    "minimising one is maximising the other.",
    "claim.3": "Under a sigmoid, the MSE gradient carries σ'(z), which goes to 0 when |z| is "
    "large, so a saturated neuron learns slowly; cross-entropy's gradient is a − y. With a "
    "sigmoid output, use binary cross-entropy.",
    "claim.4": "With a softmax output, the cross-entropy gradient is a subtraction: "
    "cheap to compute.",
    "claim.where": "Tested in part {parts}.",
    "claim.where_many": "Tested in parts {parts}.",
    # -- statuses ---------------------------------------------------------------------------
    "status.confirmed": "confirmed",
    "status.mixed": "mixed",
    "status.not confirmed": "not confirmed",
    "status.passed": "passed",
    "status.failed": "failed",
    "status.skipped": "skipped",
    # -- names -----------------------------------------------------------------------------
    "loss.cross_entropy": "cross-entropy",
    "loss.mse": "MSE",
    "data.breast_cancer": "breast cancer",
    "data.digits": "digits",
    "init.standard": "standard start",
    "init.saturated": "saturated start",
    "start.mildly wrong": "mildly wrong",
    "start.saturated": "saturated",
    "model.logistic_regression": "logistic regression",
    "model.softmax_regression": "softmax regression",
    "ref.finite differences": "finite differences",
    "ref.torch autograd": "PyTorch autograd",
    "never": "never",
    # -- figures ----------------------------------------------------------------------------
    "fig.wrong_side": "wrong side (a < ½ while y = 1)",
    "fig.bce_dz": "cross-entropy: a − y",
    "fig.mse_dz": "MSE: (a − y)·σ'(z)",
    "fig.z": "pre-activation z",
    "fig.anatomy_linear": "Gradient reaching z, target y = 1",
    "fig.abs_dz_log": "|∂L/∂z| (log scale)",
    "fig.anatomy_log": "Size of the gradient, both targets",
    "fig.right_after": "right after {n} steps",
    "fig.still_wrong": "still wrong after {n}",
    "fig.step": "gradient-descent step",
    "fig.output": "output a (target y = 0)",
    "fig.neuron_output": "Output per step, and steps to get it right",
    "fig.neuron_grad": "Gradient reaching z per step",
    "fig.neuron_suptitle": "One sigmoid neuron started wrong, same learning rate η = {lr:g} "
    "for both losses",
    "fig.steps_n": "{n} steps",
    "fig.steps_1": "1 step",
    "fig.zoomed": "gradient-descent step (first {n} of {total})",
    "fig.not_reached": "target not reached",
    "fig.target": "target {p}",
    "fig.race_title": "{data}, {init}",
    "fig.val_accuracy": "validation accuracy",
    "fig.vs_fd": "vs finite differences",
    "fig.vs_torch": "vs PyTorch autograd",
    "fig.exact_zero": "exactly 0 ({ref})",
    "fig.tolerance": "tolerance {tol}",
    "fig.relative_error": "error ÷ largest |gradient entry| (log scale)",
    "fig.checks_title": "Each step of the derivations against two references",
    "fig.checks_title_fd": "Each step of the derivations against finite differences",
    "fig.entropy": "H(p): the targets' own entropy",
    "fig.kl": "KL(p ‖ q): what training can reduce",
    "fig.hpq": "H(p, q) computed directly",
    "fig.identity_samples": "digits test sample (the {n} worst predicted, then the {m} best)",
    "fig.nats": "nats",
    "fig.identity_title": "Cross-entropy = entropy + KL divergence, per sample",
    "fig.loss_y": "{loss}, y = {y}",
    "fig.loss_z0": "{loss}, z₀ = {z0}",
    "fig.loss_z0_outcome": "{loss}, z₀ = {z0}: {outcome}",
    "fig.race_run": "{loss} (η = {lr}): {reached}",
    # -- derivation steps (figure labels and table rows) ------------------------------------
    "step.sigmoid_prime": "σ'(z) = a(1 − a)",
    "step.mse_da": "MSE: ∂L/∂a = a − y",
    "step.mse_dz": "MSE: ∂L/∂z = (a − y)σ'(z)",
    "step.mse_dw": "MSE: ∂L/∂w = (a − y)σ'(z)x",
    "step.mse_db": "MSE: ∂L/∂b = (a − y)σ'(z)",
    "step.bce_da": "BCE: ∂L/∂a = −y/a + (1−y)/(1−a)",
    "step.bce_dz": "BCE: ∂L/∂z = a − y",
    "step.bce_dw": "BCE: ∂L/∂w = x(a − y)",
    "step.bce_db": "BCE: ∂L/∂b = a − y",
    "step.softmax_diag": "softmax: ∂aⱼ/∂zⱼ = aⱼ(1 − aⱼ)",
    "step.softmax_offdiag": "softmax: ∂a_q/∂zⱼ = −a_q aⱼ",
    "step.ce_da": "CE: ∂L/∂a_q = −y_q/a_q",
    "step.softmax_ce_dz_general": "CE: ∂L/∂zⱼ = aⱼΣy − yⱼ",
    "step.softmax_ce_dz": "CE: ∂L/∂zⱼ = aⱼ − yⱼ",
    # -- part 1 -----------------------------------------------------------------------------
    "s1.short": "Gradient anatomy",
    "s1.title": "Where the gradient goes: MSE against cross-entropy",
    "s1.claim": "“The MSE gradient always depends on σ'(z) … when z is large, σ'(z) tends to "
    "zero, which slows the network's convergence.” For cross-entropy, “∂L/∂b = a − y”.",
    "s1.explain": (
        "With a sigmoid output a = σ(z), training moves the weights by the gradient that "
        "reaches the pre-activation z. Under MSE it is (a − y)·σ'(z). The factor "
        "σ'(z) = a(1 − a) is at most ¼ (at z = 0) and falls like e^(−|z|): {sp} at z = {z}. "
        "Under cross-entropy the factor cancels (part {p_checks} shows how) and what remains, a − y, "
        "is large exactly when the neuron is wrong. The shaded band is where a neuron with "
        "target y = 1 is wrong; the right-hand panel shows the same on a log scale, for both "
        "targets."
    ),
    "s1.alt1": "dL/dz against z for target 1: cross-entropy stays near −1 where the neuron is "
    "wrong, MSE goes to 0",
    "s1.alt2": "size of dL/dz on a log scale for both targets",
    "s1.table_caption": "Closed-form gradients from value_and_grad and the chain rule.",
    "s1.verdict": (
        "At z = {z} with y = 1 (confidently wrong) |∂L/∂z| is {mse} under MSE and {bce} "
        "under cross-entropy, {ratio}× larger; the closed forms match finite differences to "
        "{fd_mse} (MSE) and {fd_bce} (cross-entropy)."
    ),
    # -- part 2 -----------------------------------------------------------------------------
    "s2.short": "The saturated neuron",
    "s2.title": "One neuron, started confidently wrong",
    "s2.claim": "“When the last layer's activation is a sigmoid, binary cross-entropy solves "
    "the sigmoid's vanishing-gradient problem.”",
    "s2.explain": (
        "One neuron: input x = {x}, weight w, bias b, z = wx + b, a = σ(z), target y = {y}. "
        "The saturated start is z₀ = {z0}, so a₀ = {a0}: confidently wrong. Both losses use "
        "the same learning rate η = {lr}. Under MSE each step moves z by about "
        "2η·(a − y)σ'(z) ≈ {mse_step}: the neuron sits on a plateau for hundreds of steps "
        "before it slides. Under cross-entropy the step is 2η·(a − y) ≈ {ce_step} from the "
        "start. (With x = 1 a step changes w and b by the same amount, so z moves twice as "
        "fast as either.) The left figure shows the progress — the output against the target; "
        "the right one the gradient that drives it."
    ),
    "s2.alt1": "output per step for both losses from two starts",
    "s2.alt2": "size of the gradient per step for both losses from two starts",
    "s2.table_caption": "x = {x}, y = {y}, learning rate {lr} for both losses; MSE is the "
    "article's (a − y)²/2. Losses of different kinds are not compared: only steps and outputs.",
    "s2.h.start": "start",
    "s2.h.params": "initial parameters",
    "s2.h.loss": "loss",
    "s2.h.right": "steps to get right (|a − y| < ½)",
    "s2.h.close": "steps to |a − y| < {tol}",
    "s2.h.output": "output after {n} steps",
    "s2.verdict_part": "from the {start} start, cross-entropy needed {ce} steps and MSE {mse}",
    "s2.verdict": "At learning rate {lr}, {parts}.",
    "s2.more": " ({ratio}× more)",
    "s2.play": "Try it: choose the start and the learning rate",
    "s2.play_intro": (
        "Each curve is one of the {runs} runs (every start z₀ × every learning rate η, both "
        "losses, {steps} steps) that the Python side trained with the library's gradients and "
        "embedded in this page. The page only looks them up; nothing is computed in the browser."
    ),
    "s2.z0": "start z₀ (a₀ = σ(z₀))",
    "s2.lr": "learning rate η",
    "s2.range": "steps shown",
    "s2.range_short": "first 50",
    "s2.range_all": "all {n}",
    "s2.live_output": "Output a per step (target 0; above the dotted line it is wrong)",
    "s2.live_factor": "The factor σ'(z) = a(1 − a) along each run",
    "s2.live_summary": "cross-entropy: {ce}; MSE: {mse}.",
    "s2.right_after": "right after {n} steps",
    "s2.still_wrong": "still wrong after {n} steps",
    # -- part 3 -----------------------------------------------------------------------------
    "s3.short": "Real data, fair race",
    "s3.title": "Real data, a fair race",
    "s3.claim": "“That is why MSE is not recommended as the loss of a classification network.”",
    "s3.explain": (
        "Does it matter on real data? Two classic data sets that ship with scikit-learn: "
        "breast cancer (569 tumours, 30 measurements, benign or malignant; logistic "
        "regression, a sigmoid output) and handwritten digits (1797 images of 8 × 8 pixels, "
        "10 classes; softmax regression). Each is split 60/20/20 into training, validation "
        "and test sets. The weights start either small (the standard start) or saturated: "
        "random weights scaled so the starting logits have a spread of {sat}, so most outputs "
        "start near 0 or 1 and many of them wrong. Each loss gets its own learning rate from "
        "the same grid ({grid}), chosen on the validation set; the test set gives only the "
        "final numbers. Full-batch gradient descent, {steps} steps."
    ),
    "s3.alt": "validation accuracy per step, MSE and cross-entropy, {data}, {init}",
    "s3.meaning_title": "What this means",
    "s3.table_caption": (
        "Learning rate = the grid value that reaches the target validation accuracy in the "
        "fewest steps (ties: lower validation log-loss). Log-loss is the cross-entropy of the "
        "predicted probabilities on the test set, in nats; lower is better."
    ),
    "s3.quality_caption": (
        "The fair counterpart: each loss at the learning rate with the best final validation "
        "accuracy (ties: lower validation log-loss)."
    ),
    "s3.grid_caption": "Steps to the target validation accuracy for every learning rate.",
    "s3.h.model": "model",
    "s3.h.data": "data set",
    "s3.h.init": "start",
    "s3.h.loss": "loss",
    "s3.h.lr": "learning rate",
    "s3.h.target": "target (validation)",
    "s3.h.steps": "steps to target",
    "s3.h.acc": "test accuracy",
    "s3.h.ll": "test log-loss",
    "s3.h.run": "run",
    "s3.verdict": (
        "With each loss at its fastest learning rate, cross-entropy reached the target "
        "validation accuracy first in {faster} of {n} settings (MSE in {slower}, tied "
        "{tied}); at equal learning rates it was first in {pairs_ce} of {pairs} cases, MSE "
        "in {pairs_mse}. MSE had the higher test accuracy in {acc_mse} of {n} settings."
    ),
    "s3.m.margins": (
        "Steps to the target, cross-entropy against MSE, each at its fastest learning rate: "
        "{margins}. The largest margin is {largest} steps of the {steps}."
    ),
    "s3.m.rates": (
        "The learning rates chosen (cross-entropy against MSE): {rates}. MSE's was the larger "
        "in {larger} of {n} settings: a larger step makes up for the small factor σ'(z)."
    ),
    "s3.m.hides": (
        "So on these data sets, tuning each loss's learning rate largely hides MSE's "
        "saturation. That is the article's point seen from the other side: at one learning "
        "rate for both, as the article compares them, the picture is clear (next paragraph); "
        "MSE only catches up when its learning rate is tuned for it."
    ),
    "s3.m.equal": (
        "At the same learning rate — the comparison the article makes — cross-entropy was "
        "first in {ce} of {total} cases, MSE in {mse}; the target was reached at {reached_ce} "
        "of the grid's learning rates under cross-entropy and {reached_mse} under MSE."
    ),
    "s3.m.accuracy": (
        "Final test accuracy is another matter: the largest gap between the two losses is "
        "{gap} points ({samples} test samples). At the learning rate of the best final "
        "validation accuracy, MSE's test accuracy was higher in {q_mse} of {n} settings and "
        "cross-entropy's in {q_ce}. On these small data sets both losses end up about equally "
        "accurate; cross-entropy's advantage is in getting there."
    ),
    "s3.m.ll_better": (
        "It also gave the better probabilities: its test log-loss was lower in {ll_ce} of {n} "
        "settings."
    ),
    "s3.m.ll_not": (
        "Its probabilities were not clearly better here: its test log-loss was lower in only "
        "{ll_ce} of {n} settings (a learning rate chosen for speed can leave a model "
        "over-confident)."
    ),
    # -- part 4 -----------------------------------------------------------------------------
    "s4.short": "Derivation checks",
    "s4.title": "The derivations, step by step, checked",
    "s4.claim": "“∂L/∂w = x(a − y), ∂L/∂b = a − y” for BCE under a sigmoid, and for softmax "
    "with cross-entropy “∂L/∂zⱼ = aⱼ − yⱼ”: “very little computation, very efficient”.",
    "s4.explain": (
        "The article derives the gradients by hand, for one sample. Each step is typeset "
        "below as it derives it; beside it is the largest error of that formula in this run, "
        "on a batch of {n} random samples, against finite differences of the library's own "
        "functions and {torch}. Errors are divided by the largest entry of the gradient, so "
        "every step is measured on its own scale; the tolerance is {tol}."
    ),
    "s4.torch": "against PyTorch autograd {version} (float64)",
    "s4.no_torch": "(PyTorch autograd skipped: {reason})",
    "s4.sigmoid": "The sigmoid and its derivative",
    "s4.mse": "MSE under a sigmoid",
    "s4.bce": "Binary cross-entropy under a sigmoid: σ'(z) cancels",
    "s4.softmax": "Softmax with cross-entropy",
    "s4.softmax_cases": "Two cases of the Jacobian, then the sum:",
    "s4.check_fd": "vs finite differences",
    "s4.check_torch": "vs autograd",
    "s4.why_cancel": (
        "Under MSE the factor σ'(z) stays; under cross-entropy, ∂L/∂a has exactly a(1 − a) "
        "in its denominator, and the chain rule multiplies by σ'(z) = a(1 − a): they cancel."
    ),
    "s4.alt": "error of each derivation step against finite differences and PyTorch",
    "s4.alt_fd": "error of each derivation step against finite differences",
    "s4.table_caption": "Float64, {n} samples; central differences with h = {h}.",
    "s4.h.step": "step",
    "s4.h.scale": "largest |entry|",
    "s4.h.err": "error vs {ref}",
    "s4.verdict": "All {n} steps agree with finite differences to ≤ {fd}{torch}.",
    "s4.verdict_torch": " and with PyTorch {version} autograd to ≤ {err}",
    "s4.verdict_skipped": "; the PyTorch autograd comparison was skipped ({reason})",
    "s4.verdict_bad": "Not every step agrees with its references: ",
    "s4.reason_quick": "--quick run",
    "s4.reason_missing": "torch is not installed",
    # -- part 5 -----------------------------------------------------------------------------
    "s5.short": "Cross-entropy and likelihood",
    "s5.title": "Why minimising cross-entropy is maximum likelihood",
    "s5.claim": "“Cross-entropy measures the difference between two distributions; the "
    "likelihood measures how well a model explains the samples … the same face, different "
    "origins, different roads to the same end.”",
    "s5.explain": (
        "A classifier gives each sample a probability for its true label: q(yᵢ | xᵢ). The "
        "likelihood of the data is the product Πᵢ q(yᵢ | xᵢ), and maximum likelihood "
        "chooses the model that makes it largest. Identities 1 and 2 say that the mean "
        "cross-entropy with the true labels is exactly −(1/n)·log of that likelihood. "
        "Since the logarithm increases and 1/n is positive, the model that minimises the "
        "cross-entropy is the one that maximises the likelihood: the two are one criterion. "
        "Identity 3 adds the information-theory view: for any target distribution p, "
        "H(p, q) = H(p) + KL(p‖q); H(p) belongs to the targets and no model can change it, "
        "so minimising cross-entropy minimises the divergence KL(p‖q) of the model from the "
        "targets, which is 0 only when q = p. With one-hot labels H(p) = 0 and cross-entropy "
        "is the divergence itself. Each identity is checked on a trained model's test "
        "predictions against the true test labels."
    ),
    "s5.alt": "stacked bars of entropy and KL divergence per test sample, equal to the "
    "cross-entropy",
    "s5.h.identity": "identity",
    "s5.h.data": "evaluated on",
    "s5.h.lhs": "left side (library)",
    "s5.h.rhs": "right side (definition)",
    "s5.h.diff": "|difference|",
    "s5.table_caption": (
        "Logarithms of probabilities come from log σ(z) and log-softmax, never from log of "
        "a probability that may have rounded to 0 or 1; label smoothing ε = {eps} for "
        "identity 3."
    ),
    "s5.id.mean_bce_equals_negative_log_likelihood": "1. mean BCE = −log-likelihood / n "
    "(Bernoulli)",
    "s5.id.mean_ce_equals_negative_log_likelihood": "2. mean CE = −log-likelihood / n "
    "(categorical)",
    "s5.id.cross_entropy_equals_entropy_plus_kl": "3. H(p, q) = H(p) + KL(p ‖ q)",
    "s5.id.two_class_softmax_ce_equals_bce_on_logit_difference": "4. two-class softmax CE = "
    "BCE on z₁ − z₀",
    "s5.data.breast_cancer": "breast-cancer test set, labels",
    "s5.data.digits": "digits test set, labels",
    "s5.verdict": "All {n} identities hold on real predictions against the labels to ≤ {err}.",
    "s5.verdict_exact": "All {n} identities hold exactly (difference 0) on real predictions against the labels.",
    "s5.verdict_bad": "An identity is off by {err}.",
    # -- glossary ---------------------------------------------------------------------------
    "g.sigmoid": "sigmoid σ(z) = 1/(1 + e^(−z)): squashes any number into (0, 1); "
    "its slope σ'(z) = a(1 − a) is at most ¼.",
    "g.z": "pre-activation (logit) z: the neuron's input to the sigmoid, z = wx + b.",
    "g.saturated": "saturated: |z| so large that σ(z) is almost 0 or 1 and σ'(z) almost 0; "
    "“confidently wrong” when it is on the wrong side.",
    "g.mse": "MSE (均方误差): mean squared error. Parts {p_nielsen} to {p_link} and part "
    "{p_checks} use the article's (a − y)²/2 for one sample (Nielsen's quadratic cost). Part "
    "{p_race} averages over the training samples: the mean of (a − y)² (breast cancer) and of "
    "‖a − y‖², summed over the 10 classes (digits); there the missing ½ only doubles the "
    "gradient, which each loss's own tuned learning rate absorbs. The hidden-layer network of "
    "part {p_hidden} also uses the mean of (a − y)², at the same η as cross-entropy: its gradient "
    "is twice that of the ½ form, a factor in MSE's favour.",
    "g.ce": "cross-entropy (交叉熵): also called log-loss; binary cross-entropy (BCE) for "
    "two classes.",
    "g.lr": "learning rate η: how far one gradient-descent step moves the weights.",
    "g.softmax": "softmax: turns m numbers into m probabilities, aⱼ = e^(zⱼ)/Σₖ e^(zₖ).",
    "g.split": "training / validation / test sets: the model learns on the first, settings are "
    "chosen on the second, the third is only used for the final numbers.",
    "g.nats": "nats: the unit of information with natural logarithms (1 nat ≈ 1.44 bits).",
    "g.entropy": "entropy H(p) = −Σ p log p: the uncertainty of a distribution.",
    "g.kl": "KL divergence KL(p‖q) = Σ p log(p/q): how far q is from p; 0 only when q = p.",
    "g.likelihood": "likelihood (似然函数): the probability the model gives to the observed "
    "labels, as a function of the model.",
    "g.fd": "finite differences: the slope (f(x + h) − f(x − h)) / 2h, a check that needs "
    "no calculus.",
    "g.autograd": "autograd: PyTorch's automatic differentiation, an independent reference.",
    "g.smoothing": "label smoothing ε: targets (1 − ε)·one-hot + ε/m instead of one-hot.",
    "g.vanishing": "vanishing gradient (梯度消失): a gradient scaled by a factor near 0, so "
    "learning almost stops.",
    # -- the opening: intuition ----------------------------------------------------------------
    "page.intro_title": "Start here: a learner should learn fastest when it is badly wrong",
    "page.intro_1": (
        "When we make a big mistake and see it, we usually learn the most from it: the worse "
        "the error, the bigger the correction. Gradient descent is meant to work the same way — "
        "each step is as large as the gradient — and most of the time it does. But take the "
        "simplest learner there is, one sigmoid neuron trained with the mean squared error, and "
        "start it confidently wrong: it hardly moves. Its output sits where the sigmoid is flat, "
        "the gradient carries the sigmoid's slope σ'(z), and that slope is almost zero. The "
        "neuron learns slowest exactly when it is most wrong."
    ),
    "page.intro_2": (
        "Michael Nielsen opens chapter 3 of Neural Networks and Deep Learning with this neuron; "
        "part {p_nielsen} reruns it from his two starts. Then: where the slowness comes from (parts "
        "{p_anatomy} and {p_neuron}), where cross-entropy comes from and why its gradient is "
        "simply a − y (parts {p_origin} and {p_link}), how much it matters on real data (part "
        "{p_race}), every step of the article's derivations checked (part {p_checks}), "
        "cross-entropy as likelihood and as code length, with bars you can drag (part "
        "{p_identities}) — and what cross-entropy does not fix (part {p_hidden})."
    ),
    "page.numbers": "The numbers behind the figures",
    "page.credits": (
        "Also drawn on, with thanks: Michael Nielsen, Neural Networks and Deep Learning, "
        "chapter 3 (2015) — the single neuron of part {p_nielsen}, the integration of part "
        "{p_origin} and the caveat of part {p_hidden}; Chris Olah, “Visual Information Theory” "
        "(2015) — the bars of part {p_identities}; Zhang, Lipton, Li and Smola, Dive into Deep "
        "Learning — the softmax Hessian of part {p_link}."
    ),
    "who.nielsen": "Nielsen, chapter 3, in our words",
    # -- Nielsen's neuron ----------------------------------------------------------------------
    "n.short": "Nielsen's neuron",
    "n.title": "Learning slowest when most wrong: Nielsen's neuron",
    "n.claim": (
        "A sigmoid neuron taught with the quadratic cost learns more slowly when it starts badly "
        "wrong than when it starts a little wrong; taught with the cross-entropy cost, it learns "
        "fastest at the start, when it is most wrong."
    ),
    "n.explain": (
        "Nielsen's setup, rerun here with the library's gradients (Michael Nielsen, Neural "
        "Networks and Deep Learning, chapter 3, 2015): one neuron, input x = 1, target y = 0, "
        "gradient descent for {epochs} epochs at learning rate η = {lr}; with a single training "
        "input an epoch is one step. Start 1: w = 0.6, b = 0.9, so a₀ = {a_mild}, a little "
        "wrong. Start 2: w = b = 2, so a₀ = {a_bad}, badly wrong. Under the quadratic cost "
        "C = (y − a)²/2 the second start sits on a plateau: {plateau} epochs pass before its cost "
        "has fallen by a tenth; its weight moves by {moved_first} in the first {span} epochs and "
        "by {moved_next} in the next {span} (the bias moves with it), and its fastest epoch is "
        "epoch {steepest}. {ce_fastest} The solid lines use the same η = {lr} for both costs. "
        "The two costs' learning rates are not comparable, so the dotted lines rerun "
        "cross-entropy at a rate {slower} times smaller, η = {ce_lr}: its cost still falls "
        "fastest at the start — the shape of the curve, not its speed, is the point."
    ),
    "n.alt1": "quadratic cost per epoch from Nielsen's two starts: the w = b = 2 start stays flat for {plateau} epochs",
    "n.ce_first": "Under cross-entropy both starts learn fastest in their very first epoch.",
    "n.ce_later": "Under cross-entropy the fastest epochs are {mild} and {bad}.",
    "n.alt2": "cross-entropy cost per epoch from Nielsen's two starts: both fall fastest at once",
    "n.start.w0.6_b0.9": "w = 0.6, b = 0.9",
    "n.start.w2_b2": "w = b = 2",
    "n.h.start": "start",
    "n.h.cost": "cost",
    "n.h.lr": "η",
    "n.h.a0": "a₀",
    "n.h.c0": "C₀",
    "n.h.final": "a after {n} epochs",
    "n.h.drop": "epochs until C < 0.9·C₀",
    "n.h.steepest": "fastest epoch",
    "n.table_caption": (
        "x = 1, y = 0. “Fastest epoch”: the epoch in which the cost fell most. Only the setup "
        "is Nielsen's; every number is this run's."
    ),
    "n.verdict": (
        "From w = b = 2 the quadratic cost needed {plateau} epochs to lose a tenth of its "
        "starting value, cross-entropy {ce_drop} at the same η = {lr} ({ce_drop_slow} at "
        "η = {ce_lr}); from w = 0.6, b = 0.9 the quadratic cost needed only {mild_drop}. After "
        "{epochs} epochs this run's quadratic-cost outputs are {out_mild} and {out_bad}."
    ),
    "fig.epoch": "epoch",
    "fig.cost": "cost C",
    "fig.nielsen_quadratic": "Quadratic cost C = (y − a)²/2, η = {lr}",
    "fig.nielsen_ce": "Cross-entropy cost",
    "fig.nielsen_start": "start {start}",
    "fig.nielsen_ce_rate": "{start}, η = {lr}",
    # -- where cross-entropy comes from --------------------------------------------------------
    "o.short": "Where cross-entropy comes from",
    "o.title": "Where cross-entropy comes from: integrate the gradient you want",
    "o.claim": (
        "Cross-entropy is not pulled out of thin air: ask for a gradient without σ'(z), "
        "∂C/∂b = a − y, and integrate; the cost that comes out is cross-entropy."
    ),
    "o.explain": (
        "Under the quadratic cost ∂C/∂b = (a − y)σ'(z), and σ'(z) is what stalls the neuron. "
        "So ask for the gradient without it, ∂C/∂b = a − y (with x = 1 also ∂C/∂w = a − y), "
        "and look for the cost that has it. The chain rule says ∂C/∂b = ∂C/∂a · σ'(z) = "
        "∂C/∂a · a(1 − a), so the cost must have ∂C/∂a = (a − y)/(a(1 − a)). Split it into "
        "partial fractions and integrate over a: the binary cross-entropy, up to a constant. "
        "Ask for the quadratic cost's gradient (a − y)σ'(z) instead and the same integral gives "
        "back (a − y)²/2: the gradient one wants fixes the cost. Both integrals are computed "
        "numerically in this run, over b from {lo} to {hi} ({num} points, trapezoids), and "
        "compared with the library's losses."
    ),
    "o.steps": "The integration, step by step",
    "o.check_grad": "library ∂L/∂z vs a − y:",
    "o.check_integral": "integral − library BCE varies by",
    "o.check_fd": "vs finite differences",
    "o.alt": "the numerical integral of a − y over b lies on the library's binary cross-entropy for three targets",
    "o.h.loss": "gradient asked for",
    "o.h.gives": "its integral",
    "o.h.spread": "integral − library loss: max − min",
    "o.table_caption": "Targets y = {targets}; the integral starts at b = 0, so it differs from the loss by the loss's value there.",
    "o.verdict": (
        "The library's ∂L/∂z equals a − y to {grad} (finite differences agree to {fd}); the "
        "integral of a − y over b equals the library's binary cross-entropy plus a constant, "
        "to {spread}; the integral of (a − y)σ'(z) equals (a − y)²/2 plus a constant, to "
        "{mse_spread}."
    ),
    "o.verdict_bad": "The integral does not reproduce the library's loss: ",
    "fig.origin_title": "∫ (a − y) db lies on the binary cross-entropy",
    "fig.bias": "bias b (x = 1, w = 0, so z = b)",
    "fig.origin_lib": "library BCE, y = {y}",
    "fig.origin_int": "∫(a − y) db + const",
    # -- canonical link ------------------------------------------------------------------------
    "l.short": "Why a − y",
    "l.title": "Why a − y: outputs and losses that belong together",
    "l.claim": "With a softmax output and cross-entropy, “∂L/∂zⱼ = aⱼ − yⱼ”: back-propagation through them is a subtraction.",
    "l.explain": (
        "a − y is not a lucky accident of the sigmoid. Each output function has a loss that "
        "belongs to it — its canonical partner, in the language of generalised linear models — "
        "and with that loss the gradient with respect to the pre-activation z is always "
        "prediction minus target: sigmoid with binary cross-entropy, softmax with "
        "cross-entropy, and a linear output a = z with the squared error ½‖a − y‖². Mix the "
        "pairs — a sigmoid with the squared error — and the output's slope σ'(z) comes back. "
        "The figure plots, for every entry of a random batch, ∂L/∂z from the library's "
        "value_and_grad (for the mixed pair its ∂L/∂a times σ'(z), by the chain rule; finite "
        "differences of each whole loss check all four) against a − y: the three matching pairs "
        "lie on the diagonal, the mixed pair falls off it towards 0 where the sigmoid "
        "saturates. The same view gives "
        "the curvature: the second derivative of softmax cross-entropy in z is "
        "diag(a) − aaᵀ, the covariance of the softmax distribution (as d2l.ai notes), which is "
        "never negative in any direction: the loss is convex in z."
    ),
    "l.alt": "library gradient against a − y: three matching pairs on the diagonal, sigmoid with MSE below it",
    "l.pair.sigmoid_bce": "sigmoid + binary cross-entropy",
    "l.pair.softmax_ce": "softmax + cross-entropy",
    "l.pair.identity_mse": "linear output + ½‖a − y‖²",
    "l.pair.sigmoid_mse": "sigmoid + ½(a − y)² (mixed)",
    "l.pair.hessian": "softmax + CE: Hessian in z = diag(a) − aaᵀ",
    "l.h.pair": "output + loss",
    "l.h.gap": "max |∂L/∂z − (a − y)|",
    "l.h.fd": "max |library − finite differences|",
    "l.table_caption": "Random batch, seed {seed}; float64; central differences with h = 1e-6 (1e-5 for the Hessian, from the library's gradient).",
    "l.verdict": (
        "The three matching pairs give ∂L/∂z = a − y to {gap}, and finite differences of the "
        "library's losses agree to {fd}; sigmoid with the squared error is off a − y by up to "
        "{mixed}. The finite-difference Hessian of softmax cross-entropy equals "
        "diag(a) − aaᵀ to {hess}."
    ),
    "l.verdict_bad": "Not every pair behaves as stated: ",
    "fig.link_title": "∂L/∂z from the library against a − y",
    "fig.link_x": "a − y",
    "fig.link_y": "∂L/∂z (library)",
    # -- code length (inside the identities part) ------------------------------------------------
    "k.title": "Try it: cross-entropy as code length",
    "k.intro": (
        "Cross-entropy has a second reading, which Chris Olah's “Visual Information Theory” "
        "draws with bars: H(p, q) is the average length, in nats, of messages about outcomes "
        "drawn from p, written in a code built for q. The best code is built for p itself and "
        "costs H(p), which no model can change; using q instead costs KL(p‖q) more. "
        "Training a model lowers exactly that extra part."
    ),
    "k.howto": (
        "Drag the top of any bar, or focus it with Tab and press the arrow keys (Home and End "
        "go to the extremes): the other bars of that distribution rescale so it still sums to "
        "1, and the bar below splits H(p, q) into H(p) and KL(p‖q). Make q equal to p and the "
        "KL part vanishes."
    ),
    "k.static": (
        "The starting example, computed by the library: H(p) = {h}, KL(p‖q) = {kl}, "
        "H(p, q) = {hpq} nats (H(p, q) − H(p) − KL(p‖q) = {gap})."
    ),
    "k.p": "p: the data",
    "k.q": "q: the model",
    "k.outcome": "outcome {i}",
    "k.bar": "{dist}, outcome {i}",
    "k.reset": "Back to the example",
    "k.equal": "Set q = p",
    "k.readout": "H(p) = {h} + KL(p‖q) = {kl} → H(p, q) = {hpq} nats",
    "k.noscript": "JavaScript is off: the bars show the library's example; with JavaScript on you can drag them.",
    # -- the hidden layer ------------------------------------------------------------------------
    "h.short": "What cross-entropy does not fix",
    "h.title": "What cross-entropy does not fix: a saturated hidden layer",
    "h.explain": (
        "Everything so far had the sigmoid at the output, and cross-entropy cancels that "
        "sigmoid's slope — only that one. Put a hidden layer of sigmoid units h = σ(z₁), "
        "z₁ = xW₁ + b₁, below the output a = σ(z₂), z₂ = hW₂ + b₂. Back-propagation gives the "
        "hidden layer δ₁ = (δ₂W₂ᵀ) ⊙ σ'(z₁), where δ₂ = ∂L/∂z₂ is a − y under cross-entropy. "
        "The factor σ'(z₁) is the hidden units' own slope: no loss at the output touches it. "
        "Here {hidden} hidden units learn the XOR of Gaussian clouds ({n} points, seeded): no "
        "single neuron can separate them, so the hidden layer has to learn. Hidden biases of "
        "±c push the hidden units into saturation. We measure both layers' gradients at the "
        "start for several c (median of {inits} random starts), then train from c = {c0} and "
        "c = {c1} with both losses at the same η = {lr} for {steps} full-batch steps. The "
        "gradients are written out in NumPy (the output's δ₂ from the library) and match "
        "finite differences to {fd}. Nielsen makes the same point in chapter 3 and returns to "
        "it in chapter 5 as the vanishing-gradient problem of deep networks."
    ),
    "h.alt1": "gradient norms of the hidden and output layers against the hidden-bias offset c: the hidden layer's falls under both losses",
    "h.alt2": "training accuracy per step from a standard and a saturated hidden layer, both losses",
    "h.h.offset": "offset c",
    "h.h.sp": "mean σ'(z₁)",
    "h.h.sat": "saturated (σ' < 0.01)",
    "h.h.hidden": "‖∇ hidden‖, {loss}",
    "h.h.output": "‖∇ output‖, {loss}",
    "h.h.start": "start",
    "h.h.loss": "loss",
    "h.h.steps": "steps to {p} training accuracy",
    "h.h.final": "accuracy after {n} steps",
    "h.h.change": "‖W₁ − W₁⁽⁰⁾‖ / ‖W₁⁽⁰⁾‖",
    "h.start.standard": "standard (c = {c})",
    "h.start.saturated": "saturated (c = {c})",
    "h.table_caption": "Gradients of the mean loss at initialisation; medians over {inits} random starts per offset.",
    "h.train_caption": "Full-batch gradient descent, η = {lr}, the same starting weights for both losses.",
    "h.verdict": (
        "From c = 0 to c = {cmax} the hidden layer's gradient fell {ce_fall}× under "
        "cross-entropy and {mse_fall}× under MSE, as its mean σ'(z₁) fell {sp_fall}×, while "
        "cross-entropy's output-layer gradient did not fall ({out_ratio}× its value at c = 0). "
        "From the saturated start cross-entropy needed {ce_sat} steps to {p} training accuracy "
        "instead of {ce_std}, MSE {mse_sat} instead of {mse_std}. Cross-entropy removes the "
        "output's σ'(z), not the hidden layer's."
    ),
    "h.verdict_holds": (
        "The hidden layer's gradient did not shrink under cross-entropy here "
        "({ce_fall}× from c = 0 to c = {cmax}; MSE {mse_fall}×)."
    ),
    "fig.hidden_grad_title": "Gradient at the start vs hidden saturation",
    "fig.offset": "hidden-bias offset c (units start at z₁ ≈ ±c)",
    "fig.grad_norm": "gradient norm, mean σ'(z₁) (log scale)",
    "fig.hidden_layer": "hidden layer, {loss}",
    "fig.output_layer": "output layer, {loss}",
    "fig.mean_sp": "mean σ'(z₁)",
    "fig.hidden_train_title": "Training accuracy, same η for both losses",
    "fig.train_acc": "training accuracy",
    "fig.hidden_run": "{loss}, {start}",
    "fig.start.standard": "c = {c}",
    "fig.start.saturated": "c = {c} (saturated)",
    # -- glossary additions --------------------------------------------------------------------
    "g.epoch": "epoch: one pass over the training data; with Nielsen's single training input, one gradient step.",
    "g.canonical": "canonical link: the loss that belongs to an output function (sigmoid ↔ binary cross-entropy, softmax ↔ cross-entropy, linear ↔ squared error), for which ∂L/∂z = a − y.",
    "g.hidden": "hidden layer: units between the input and the output; their own σ'(z) multiplies every gradient that reaches them.",
    "g.code": "code length: the average number of nats (or bits) needed to send outcomes of p with a code built for q; it is H(p, q).",
}

ZH: dict[str, str] = {
    "html.lang": "zh-CN",
    "page.title": "为什么 sigmoid 输出要配交叉熵而不是均方误差 — crossentropy demo",
    "page.h1": "为什么 sigmoid 输出要配交叉熵，而不是均方误差",
    "page.cite": (
        "本页用可以运行的代码，逐条检验 {author} {year} 年发表在{site}的文章"
        '<cite>《{title}》</cite>中的结论。原文为中文：<a href="{url}">{url}</a>。'
    ),
    "page.run": (
        "{mode}，随机种子 {seed}：计算用时 {seconds} 秒，crossentropy {version}。"
        "下面每个测得的数字、每条曲线都是本次运行中由库算出来的，没有一个是手填的。"
    ),
    "page.mode.quick": "快速运行",
    "page.mode.full": "完整运行",
    "page.other_lang": "English",
    "page.other_lang_hint": "crossentropy demo --lang en",
    "page.contents": "目录",
    "page.claims": "原文的结论",
    "page.claims_intro": "原文有四个结论，本页的各部分分别检验它们。",
    "page.summary": "本次运行的结果",
    "page.glossary": "术语表",
    "page.footer": (
        "数据：scikit-learn 自带的乳腺癌和手写数字数据集（无需下载）。所有数字也保存在本文件旁的 "
        "metrics.json 中，图也以 SVG 文件的形式放在旁边。版本：{versions}。"
    ),
    "page.part": "部分",
    "page.verdict": "结论",
    "page.measured": "本次测得",
    "page.article_says": "原文",
    "page.measured_label": "本次运行测得：",
    "page.noscript": (
        "JavaScript 已关闭：上面的图给出了表中两个起点在 η = {lr} 时的结果。"
        "打开 JavaScript 后，可以在这里用滑块选择起点和学习率。"
    ),
    "claim.1": "交叉熵只有一种，二分类时写成二元交叉熵，多分类（m 类）时写成多分类交叉熵（n 个样本）。",
    "claim.2": "单个样本的对数似然函数与交叉熵公式一致：两者“同貌不同源”，但“殊途同归”——"
    "最小化交叉熵就是最大化似然。",
    "claim.3": "sigmoid 作激活函数时，均方误差的梯度含有 σ'(z)，|z| 较大时它趋于零，饱和的神经元学得很慢；"
    "交叉熵的梯度是 a − y。所以 sigmoid 输出应使用二元交叉熵。",
    "claim.4": "softmax 配合交叉熵，反向传播的梯度只是一次减法，计算量非常小。",
    "claim.where": "在第 {parts} 部分检验。",
    "claim.where_many": "在第 {parts} 部分检验。",
    "status.confirmed": "成立",
    "status.mixed": "部分成立",
    "status.not confirmed": "不成立",
    "status.passed": "通过",
    "status.failed": "未通过",
    "status.skipped": "跳过",
    "loss.cross_entropy": "交叉熵",
    "loss.mse": "均方误差",
    "data.breast_cancer": "乳腺癌",
    "data.digits": "手写数字",
    "init.standard": "普通起点",
    "init.saturated": "饱和起点",
    "start.mildly wrong": "轻度错误",
    "start.saturated": "饱和",
    "model.logistic_regression": "逻辑回归",
    "model.softmax_regression": "softmax 回归",
    "ref.finite differences": "有限差分",
    "ref.torch autograd": "PyTorch 自动求导",
    "never": "未达到",
    "fig.wrong_side": "错误一侧（y = 1 而 a < ½）",
    "fig.bce_dz": "交叉熵：a − y",
    "fig.mse_dz": "均方误差：(a − y)·σ'(z)",
    "fig.z": "激活前的值 z",
    "fig.anatomy_linear": "传到 z 的梯度，目标 y = 1",
    "fig.abs_dz_log": "|∂L/∂z|（对数坐标）",
    "fig.anatomy_log": "梯度的大小，两种目标",
    "fig.right_after": "{n} 步后正确",
    "fig.still_wrong": "{n} 步后仍错误",
    "fig.step": "梯度下降步数",
    "fig.output": "输出 a（目标 y = 0）",
    "fig.neuron_output": "每一步的输出，以及变为正确所需的步数",
    "fig.neuron_grad": "每一步传到 z 的梯度",
    "fig.neuron_suptitle": "一个从错误处出发的 sigmoid 神经元，两种损失用同一学习率 η = {lr:g}",
    "fig.steps_n": "{n} 步",
    "fig.steps_1": "1 步",
    "fig.zoomed": "梯度下降步数（共 {total} 步中的前 {n} 步）",
    "fig.not_reached": "未达到目标",
    "fig.target": "目标 {p}",
    "fig.race_title": "{data}，{init}",
    "fig.val_accuracy": "验证集准确率",
    "fig.vs_fd": "对比有限差分",
    "fig.vs_torch": "对比 PyTorch 自动求导",
    "fig.exact_zero": "恰好为 0（{ref}）",
    "fig.tolerance": "容差 {tol}",
    "fig.relative_error": "误差 ÷ 梯度最大分量的绝对值（对数坐标）",
    "fig.checks_title": "推导的每一步对照两种参考",
    "fig.checks_title_fd": "推导的每一步对照有限差分",
    "fig.entropy": "H(p)：目标分布自身的熵",
    "fig.kl": "KL(p ‖ q)：训练能减小的部分",
    "fig.hpq": "直接计算的 H(p, q)",
    "fig.identity_samples": "手写数字测试样本（预测最差的 {n} 个，然后是最好的 {m} 个）",
    "fig.nats": "奈特",
    "fig.identity_title": "交叉熵 = 熵 + KL 散度（逐个样本）",
    "fig.loss_y": "{loss}，y = {y}",
    "fig.loss_z0": "{loss}，z₀ = {z0}",
    "fig.loss_z0_outcome": "{loss}，z₀ = {z0}：{outcome}",
    "fig.race_run": "{loss}（η = {lr}）：{reached}",
    "step.sigmoid_prime": "σ'(z) = a(1 − a)",
    "step.mse_da": "均方误差：∂L/∂a = a − y",
    "step.mse_dz": "均方误差：∂L/∂z = (a − y)σ'(z)",
    "step.mse_dw": "均方误差：∂L/∂w = (a − y)σ'(z)x",
    "step.mse_db": "均方误差：∂L/∂b = (a − y)σ'(z)",
    "step.bce_da": "交叉熵：∂L/∂a = −y/a + (1−y)/(1−a)",
    "step.bce_dz": "交叉熵：∂L/∂z = a − y",
    "step.bce_dw": "交叉熵：∂L/∂w = x(a − y)",
    "step.bce_db": "交叉熵：∂L/∂b = a − y",
    "step.softmax_diag": "softmax：∂aⱼ/∂zⱼ = aⱼ(1 − aⱼ)",
    "step.softmax_offdiag": "softmax：∂a_q/∂zⱼ = −a_q aⱼ",
    "step.ce_da": "多分类交叉熵：∂L/∂a_q = −y_q/a_q",
    "step.softmax_ce_dz_general": "多分类交叉熵：∂L/∂zⱼ = aⱼΣy − yⱼ",
    "step.softmax_ce_dz": "多分类交叉熵：∂L/∂zⱼ = aⱼ − yⱼ",
    "s1.short": "梯度剖析",
    "s1.title": "梯度去了哪里：均方误差与交叉熵",
    "s1.claim": "“均方误差求导后的梯度始终跟 σ'(z) 是有关系的……当 z 的值较大时，σ'(z) 的值会趋于零，"
    "进而降低神经网络的收敛速度。”而交叉熵的“∂L/∂b = a − y”。",
    "s1.explain": (
        "输出为 a = σ(z) 时，训练靠传到激活前的值 z 的梯度来更新权重。用均方误差时这个梯度是 "
        "(a − y)·σ'(z)。因子 σ'(z) = a(1 − a) 最大只有 ¼（在 z = 0 处），并按 e^(−|z|) 衰减："
        "z = {z} 时只有 {sp}。用交叉熵时这个因子被约掉了（第 {p_checks} 部分给出推导），剩下的 a − y "
        "恰好在神经元出错时最大。阴影区是目标 y = 1 的神经元出错的区域；右图用对数坐标画出两种目标下的同一件事。"
    ),
    "s1.alt1": "目标为 1 时 dL/dz 随 z 的变化：出错一侧交叉熵保持在 −1 附近，均方误差趋于 0",
    "s1.alt2": "两种目标下 dL/dz 的大小（对数坐标）",
    "s1.table_caption": "闭式梯度由 value_and_grad 和链式法则得到。",
    "s1.verdict": (
        "在 z = {z}、y = 1（自信地错了）处，|∂L/∂z| 用均方误差是 {mse}，用交叉熵是 {bce}，"
        "大 {ratio} 倍；闭式梯度与有限差分相差不超过 {fd_mse}（均方误差）和 {fd_bce}（交叉熵）。"
    ),
    "s2.short": "饱和的神经元",
    "s2.title": "一个自信地犯错的神经元",
    "s2.claim": "“当神经网络最后一层的激活函数是 sigmoid 函数时，使用二进制交叉熵损失函数可以解决 "
    "sigmoid 梯度消失的问题。”",
    "s2.explain": (
        "一个神经元：输入 x = {x}，权重 w，偏置 b，z = wx + b，a = σ(z)，目标 y = {y}。"
        "饱和起点 z₀ = {z0}，于是 a₀ = {a0}：自信地错了。两种损失用同一学习率 η = {lr}。"
        "用均方误差时，每一步 z 只移动约 2η·(a − y)σ'(z) ≈ {mse_step}：神经元在平台上停留几百步才开始下滑；"
        "用交叉熵时，从第一步起每步就移动 2η·(a − y) ≈ {ce_step}。"
        "（x = 1 时每一步 w 和 b 变化相同，所以 z 的变化是它们的两倍。）"
        "左图是进展——输出离目标多远；右图是推动它的梯度。"
    ),
    "s2.alt1": "两个起点、两种损失下每一步的输出",
    "s2.alt2": "两个起点、两种损失下每一步梯度的大小",
    "s2.table_caption": "x = {x}，y = {y}，两种损失的学习率都是 {lr}；均方误差取原文的 (a − y)²/2。"
    "两种损失的数值单位不同，不作比较，只比较步数和输出。",
    "s2.h.start": "起点",
    "s2.h.params": "初始参数",
    "s2.h.loss": "损失",
    "s2.h.right": "变为正确所需步数（|a − y| < ½）",
    "s2.h.close": "达到 |a − y| < {tol} 的步数",
    "s2.h.output": "{n} 步后的输出",
    "s2.verdict_part": "从{start}起点出发，交叉熵用了 {ce} 步，均方误差用了 {mse} 步",
    "s2.verdict": "学习率为 {lr} 时，{parts}。",
    "s2.more": "（多 {ratio} 倍）",
    "s2.play": "动手试试：选择起点和学习率",
    "s2.play_intro": (
        "每条曲线都来自 Python 端用库里的梯度训练好、嵌入本页的 {runs} 次运行之一"
        "（每个起点 z₀ × 每个学习率 η，两种损失，各 {steps} 步）。页面只负责查表，浏览器里不做任何计算。"
    ),
    "s2.z0": "起点 z₀（a₀ = σ(z₀)）",
    "s2.lr": "学习率 η",
    "s2.range": "显示的步数",
    "s2.range_short": "前 50 步",
    "s2.range_all": "全部 {n} 步",
    "s2.live_output": "每一步的输出 a（目标 0；虚线以上为错误）",
    "s2.live_factor": "每次运行中的因子 σ'(z) = a(1 − a)",
    "s2.live_summary": "交叉熵：{ce}；均方误差：{mse}。",
    "s2.right_after": "{n} 步后正确",
    "s2.still_wrong": "{n} 步后仍错误",
    "s3.short": "真实数据上的公平比赛",
    "s3.title": "真实数据上的公平比赛",
    "s3.claim": "“因此不建议使用均方误差作为神经网络分类问题的损失函数。”",
    "s3.explain": (
        "在真实数据上这一点重要吗？用 scikit-learn 自带的两个经典数据集：乳腺癌（569 个肿瘤，30 项测量，"
        "良性或恶性；逻辑回归，sigmoid 输出）和手写数字（1797 张 8 × 8 像素的图片，10 类；softmax 回归）。"
        "每个数据集按 60/20/20 分为训练集、验证集和测试集。权重要么从很小的值出发（普通起点），"
        "要么从饱和处出发：随机权重按比例放大，使初始 logit 的标准差为 {sat}，大多数输出一开始就接近 0 或 1，"
        "其中很多是错的。每种损失从同一组学习率（{grid}）中按验证集各选各的；测试集只用来给出最终数字。"
        "全批量梯度下降，{steps} 步。"
    ),
    "s3.alt": "{data}、{init}：均方误差与交叉熵每一步的验证集准确率",
    "s3.meaning_title": "这说明什么",
    "s3.table_caption": (
        "学习率 = 网格中最快达到目标验证准确率的值（并列时取验证集对数损失更低者）。"
        "对数损失是预测概率在测试集上的交叉熵，单位为奈特，越低越好。"
    ),
    "s3.quality_caption": "公平的另一面：每种损失取最终验证准确率最好的学习率（并列时取验证集对数损失更低者）。",
    "s3.grid_caption": "每个学习率下达到目标验证准确率所需的步数。",
    "s3.h.model": "模型",
    "s3.h.data": "数据集",
    "s3.h.init": "起点",
    "s3.h.loss": "损失",
    "s3.h.lr": "学习率",
    "s3.h.target": "目标（验证集）",
    "s3.h.steps": "达到目标的步数",
    "s3.h.acc": "测试准确率",
    "s3.h.ll": "测试对数损失",
    "s3.h.run": "运行",
    "s3.verdict": (
        "各用最快的学习率时，交叉熵在 {n} 个设置中的 {faster} 个里先达到目标验证准确率"
        "（均方误差 {slower} 个，持平 {tied} 个）；在相同学习率下，{pairs} 种情况中交叉熵领先 {pairs_ce} 次，"
        "均方误差 {pairs_mse} 次。均方误差的测试准确率在 {n} 个设置中有 {acc_mse} 个更高。"
    ),
    "s3.m.margins": "各用最快的学习率时，达到目标的步数（交叉熵对均方误差）：{margins}。最大的差距是 {largest} 步（共 {steps} 步）。",
    "s3.m.rates": (
        "所选的学习率（交叉熵对均方误差）：{rates}。{n} 个设置中有 {larger} 个是均方误差的更大："
        "更大的步长弥补了很小的因子 σ'(z)。"
    ),
    "s3.m.hides": (
        "所以在这两个数据集上，给每种损失各自调好学习率，在很大程度上掩盖了均方误差的饱和问题。"
        "这从另一面印证了原文：像原文那样两者用同一个学习率时，差别一目了然（见下一段）；"
        "只有为均方误差专门调大学习率，它才追得上。"
    ),
    "s3.m.equal": (
        "在相同学习率下（这正是原文所做的比较），{total} 种情况中交叉熵领先 {ce} 次，均方误差 {mse} 次；"
        "网格中的学习率有 {reached_ce} 个让交叉熵达到了目标，均方误差只有 {reached_mse} 个。"
    ),
    "s3.m.accuracy": (
        "最终的测试准确率则是另一回事：两种损失之间最大的差距是 {gap} 个百分点（{samples} 个测试样本）。"
        "取最终验证准确率最好的学习率时，{n} 个设置中均方误差的测试准确率有 {q_mse} 个更高，交叉熵有 {q_ce} 个。"
        "在这些小数据集上两种损失最终差不多准；交叉熵的优势在于更快到达。"
    ),
    "s3.m.ll_better": "它给出的概率也更可信：测试对数损失在 {n} 个设置中有 {ll_ce} 个更低。",
    "s3.m.ll_not": (
        "这里它的概率并没有明显更可信：测试对数损失在 {n} 个设置中只有 {ll_ce} 个更低"
        "（为速度选出的学习率可能让模型过于自信）。"
    ),
    "s4.short": "推导检验",
    "s4.title": "逐步推导，逐步检验",
    "s4.claim": "sigmoid 下二元交叉熵的“∂L/∂w = x(a − y)，∂L/∂b = a − y”，以及 softmax 配合交叉熵的"
    "“∂L/∂zⱼ = aⱼ − yⱼ”：“计算量非常小，十分高效”。",
    "s4.explain": (
        "原文针对单个样本手工推导了梯度。下面按原文的推导排出每一步；每一步旁边是该公式在本次运行中的最大误差："
        "在 {n} 个随机样本上，对照库自身函数的有限差分，以及{torch}。误差除以梯度最大分量的绝对值，"
        "所以每一步都按自己的量级衡量；容差为 {tol}。"
    ),
    "s4.torch": " PyTorch {version} 的自动求导（float64）",
    "s4.no_torch": "（跳过了 PyTorch 自动求导：{reason}）",
    "s4.sigmoid": "sigmoid 及其导数",
    "s4.mse": "sigmoid 下的均方误差",
    "s4.bce": "sigmoid 下的二元交叉熵：σ'(z) 被约掉",
    "s4.softmax": "softmax 配合交叉熵",
    "s4.softmax_cases": "雅可比矩阵分两种情况，再求和：",
    "s4.check_fd": "对比有限差分",
    "s4.check_torch": "对比自动求导",
    "s4.why_cancel": (
        "用均方误差时因子 σ'(z) 一直留着；用交叉熵时，∂L/∂a 的分母恰好是 a(1 − a)，"
        "链式法则又乘上 σ'(z) = a(1 − a)，两者相消。"
    ),
    "s4.alt": "推导每一步对照有限差分和 PyTorch 的误差",
    "s4.alt_fd": "推导每一步对照有限差分的误差",
    "s4.table_caption": "float64，{n} 个样本；中心差分步长 h = {h}。",
    "s4.h.step": "步骤",
    "s4.h.scale": "最大分量绝对值",
    "s4.h.err": "对比{ref}的误差",
    "s4.verdict": "全部 {n} 步与有限差分的误差不超过 {fd}{torch}。",
    "s4.verdict_torch": "，与 PyTorch {version} 自动求导的误差不超过 {err}",
    "s4.verdict_skipped": "；跳过了与 PyTorch 自动求导的对比（{reason}）",
    "s4.verdict_bad": "并非每一步都与参考一致：",
    "s4.reason_quick": "--quick 快速运行",
    "s4.reason_missing": "未安装 torch",
    "s5.short": "交叉熵与似然",
    "s5.title": "为什么最小化交叉熵就是最大似然",
    "s5.claim": "“交叉熵是直接衡量两个分布，或者说两个 model 之间的差异。而似然函数则是解释以 model "
    "的输出为参数的某分布模型对样本集的解释程度。因此，可以说这两者是‘同貌不同源’，但是‘殊途同归’啦。”",
    "s5.explain": (
        "分类器给每个样本的真实标签一个概率 q(yᵢ | xᵢ)。数据的似然函数是乘积 Πᵢ q(yᵢ | xᵢ)，"
        "最大似然就是选使它最大的模型。恒等式 1 和 2 说明：以真实标签计算的平均交叉熵恰好等于 "
        "−(1/n)·log（似然）。对数单调递增、1/n 为正，所以使交叉熵最小的模型正是使似然最大的模型：两者是同一个准则。"
        "恒等式 3 给出信息论的视角：对任意目标分布 p，H(p, q) = H(p) + KL(p‖q)；H(p) 只属于目标，"
        "任何模型都改变不了它，所以最小化交叉熵就是最小化模型相对目标的 KL 散度，只有 q = p 时它才为 0。"
        "标签为独热向量时 H(p) = 0，交叉熵就是散度本身。每个恒等式都在训练好的模型对测试集的预测上、对照真实测试标签检验。"
    ),
    "s5.alt": "每个测试样本的熵与 KL 散度堆叠，等于交叉熵",
    "s5.h.identity": "恒等式",
    "s5.h.data": "数据",
    "s5.h.lhs": "左边（库）",
    "s5.h.rhs": "右边（定义）",
    "s5.h.diff": "|差|",
    "s5.table_caption": (
        "概率的对数取自 log σ(z) 和 log-softmax，从不对可能已舍入为 0 或 1 的概率取 log；"
        "恒等式 3 使用标签平滑 ε = {eps}。"
    ),
    "s5.id.mean_bce_equals_negative_log_likelihood": "1. 平均二元交叉熵 = −对数似然 / n（伯努利）",
    "s5.id.mean_ce_equals_negative_log_likelihood": "2. 平均交叉熵 = −对数似然 / n（类别分布）",
    "s5.id.cross_entropy_equals_entropy_plus_kl": "3. H(p, q) = H(p) + KL(p ‖ q)",
    "s5.id.two_class_softmax_ce_equals_bce_on_logit_difference": "4. 两类 softmax 交叉熵 = "
    "z₁ − z₀ 上的二元交叉熵",
    "s5.data.breast_cancer": "乳腺癌测试集，真实标签",
    "s5.data.digits": "手写数字测试集，真实标签",
    "s5.verdict": "全部 {n} 个恒等式在真实预测上对照标签成立，误差不超过 {err}。",
    "s5.verdict_exact": "全部 {n} 个恒等式在真实预测上对照标签精确成立（差为 0）。",
    "s5.verdict_bad": "有一个恒等式相差 {err}。",
    "g.sigmoid": "sigmoid σ(z) = 1/(1 + e^(−z))：把任意实数压到 (0, 1) 之间；斜率 σ'(z) = a(1 − a) 最大为 ¼。",
    "g.z": "激活前的值（logit）z：sigmoid 的输入，z = wx + b。",
    "g.saturated": "饱和：|z| 太大，σ(z) 几乎为 0 或 1，σ'(z) 几乎为 0；落在错误一侧时就是“自信地错了”。",
    "g.mse": "均方误差（MSE）：第 {p_nielsen} 至 {p_link} 部分和第 {p_checks} 部分取原文单个样本的 (a − y)²/2"
    "（即 Nielsen 的二次代价）。第 {p_race} 部分对训练样本取平均：乳腺癌上是 (a − y)² 的平均，"
    "手写数字上是 ‖a − y‖²（对 10 个类别求和）的平均；少了 ½ 只让梯度加倍，各自调好的学习率会把它吸收掉。"
    "第 {p_hidden} 部分的单隐藏层网络同样用 (a − y)² 的平均，并与交叉熵用同一个 η：它的梯度是 ½ 形式的两倍，"
    "这个因子对均方误差有利。",
    "g.ce": "交叉熵（cross-entropy）：也叫对数损失（log-loss）；两类时称二元交叉熵（BCE）。",
    "g.lr": "学习率 η：每一步梯度下降移动权重的幅度。",
    "g.softmax": "softmax：把 m 个数变成 m 个概率，aⱼ = e^(zⱼ)/Σₖ e^(zₖ)。",
    "g.split": "训练集 / 验证集 / 测试集：模型在第一个上学习，在第二个上选设置，第三个只用来给出最终数字。",
    "g.nats": "奈特（nat）：以自然对数计的信息单位（1 奈特 ≈ 1.44 比特）。",
    "g.entropy": "熵 H(p) = −Σ p log p：一个分布的不确定性。",
    "g.kl": "KL 散度 KL(p‖q) = Σ p log(p/q)：q 离 p 有多远；只有 q = p 时为 0。",
    "g.likelihood": "似然函数：把模型看作变量时，模型给观测到的标签的概率。",
    "g.fd": "有限差分：用 (f(x + h) − f(x − h)) / 2h 估计斜率，不需要微积分的检验方法。",
    "g.autograd": "自动求导：PyTorch 的自动微分，一个独立的参考。",
    "g.smoothing": "标签平滑 ε：目标取 (1 − ε)·独热向量 + ε/m，而不是独热向量。",
    "g.vanishing": "梯度消失：梯度被一个接近 0 的因子缩小，学习几乎停止。",
    "page.intro_title": "从这里开始：错得越厉害，本该学得越快",
    "page.intro_1": (
        "人犯了大错、又看清了错在哪里，往往学到的最多：错得越厉害，纠正得越多。梯度下降本来也是这样设计的——"
        "每一步的大小正比于梯度——多数时候它也确实如此。可是拿最简单的学习者来说：一个用均方误差训练的 sigmoid 神经元，"
        "让它从自信地犯错的地方出发，它几乎一动不动。它的输出落在 sigmoid 最平坦的地方，梯度里带着 sigmoid 的斜率 σ'(z)，"
        "而这个斜率几乎为零。这个神经元恰恰在错得最厉害的时候学得最慢。"
    ),
    "page.intro_2": (
        "Michael Nielsen 在《Neural Networks and Deep Learning》第 3 章开头用的正是这个神经元；第 {p_nielsen} 部分从他的两个起点重新运行了它。"
        "接下来：慢从哪里来（第 {p_anatomy}、{p_neuron} 部分），交叉熵从哪里来、为什么它的梯度恰好是 a − y"
        "（第 {p_origin}、{p_link} 部分），在真实数据上差别有多大（第 {p_race} 部分），原文推导的每一步都经过检验"
        "（第 {p_checks} 部分），交叉熵作为似然、作为编码长度，还有可以拖动的柱子（第 {p_identities} 部分）——"
        "以及交叉熵解决不了的问题（第 {p_hidden} 部分）。"
    ),
    "page.numbers": "图背后的数字",
    "page.credits": (
        "本页还参考了以下材料，在此致谢：Michael Nielsen《Neural Networks and Deep Learning》第 3 章（2015）"
        "——第 {p_nielsen} 部分的单个神经元、第 {p_origin} 部分的积分和第 {p_hidden} 部分的提醒；"
        "Chris Olah《Visual Information Theory》（2015）——第 {p_identities} 部分的柱子；"
        "Zhang、Lipton、Li、Smola《动手学深度学习》（Dive into Deep Learning）——第 {p_link} 部分的 softmax 交叉熵的黑塞矩阵。"
    ),
    "who.nielsen": "Nielsen，第 3 章（大意）",
    "n.short": "Nielsen 的神经元",
    "n.title": "错得最厉害时学得最慢：Nielsen 的神经元",
    "n.claim": "用二次代价训练的 sigmoid 神经元，从错得很厉害的地方出发时，比从只错一点的地方出发学得更慢；"
    "换成交叉熵代价，它在一开始、也就是错得最厉害的时候学得最快。",
    "n.explain": (
        "Nielsen 的设置，这里用库里的梯度重新运行（Michael Nielsen，《Neural Networks and Deep Learning》第 3 章，2015）："
        "一个神经元，输入 x = 1，目标 y = 0，学习率 η = {lr}，梯度下降 {epochs} 轮；只有一个训练样本，"
        "所以一轮就是一步。起点 1：w = 0.6，b = 0.9，a₀ = {a_mild}，只错一点。起点 2：w = b = 2，"
        "a₀ = {a_bad}，错得很厉害。用二次代价 C = (y − a)²/2 时，第二个起点停在平台上：过了 {plateau} 轮，"
        "代价才下降十分之一；权重在前 {span} 轮只移动了 {moved_first}，在接下来的 {span} 轮移动了 {moved_next}"
        "（偏置随之同样移动），下降最快的是第 {steepest} 轮。{ce_fastest}实线两种代价用同一个 η = {lr}。"
        "两种代价的学习率本来就不可比，所以点线用小 {slower} 倍的 η = {ce_lr} 重新运行交叉熵："
        "它的代价仍然是一开始下降最快——要看的是曲线的形状，而不是快慢。"
    ),
    "n.alt1": "Nielsen 两个起点下每一轮的二次代价：w = b = 2 的起点平坦了 {plateau} 轮",
    "n.ce_first": "用交叉熵时，两个起点都在第一轮学得最快。",
    "n.ce_later": "用交叉熵时，下降最快的分别是第 {mild} 和第 {bad} 轮。",
    "n.alt2": "Nielsen 两个起点下每一轮的交叉熵代价：两者都是一开始下降最快",
    "n.start.w0.6_b0.9": "w = 0.6，b = 0.9",
    "n.start.w2_b2": "w = b = 2",
    "n.h.start": "起点",
    "n.h.cost": "代价",
    "n.h.lr": "η",
    "n.h.a0": "a₀",
    "n.h.c0": "C₀",
    "n.h.final": "{n} 轮后的 a",
    "n.h.drop": "C < 0.9·C₀ 所需轮数",
    "n.h.steepest": "下降最快的一轮",
    "n.table_caption": (
        "x = 1，y = 0。“下降最快的一轮”：代价下降最多的那一轮。只有设置来自 Nielsen，所有数字都来自本次运行。"
    ),
    "n.verdict": (
        "从 w = b = 2 出发，二次代价要 {plateau} 轮才下降十分之一，交叉熵在同一个 η = {lr} 下只要 {ce_drop} 轮"
        "（在 η = {ce_lr} 下要 {ce_drop_slow} 轮）；从 w = 0.6，b = 0.9 出发，二次代价只要 {mild_drop} 轮。"
        "{epochs} 轮后，本次运行中二次代价的输出是 {out_mild} 和 {out_bad}。"
    ),
    "fig.epoch": "训练轮次",
    "fig.cost": "代价 C",
    "fig.nielsen_quadratic": "二次代价 C = (y − a)²/2，η = {lr}",
    "fig.nielsen_ce": "交叉熵代价",
    "fig.nielsen_start": "起点 {start}",
    "fig.nielsen_ce_rate": "{start}，η = {lr}",
    "o.short": "交叉熵从哪里来",
    "o.title": "交叉熵从哪里来：把想要的梯度积分出来",
    "o.claim": "交叉熵不是凭空想出来的：要求梯度里没有 σ'(z)，即 ∂C/∂b = a − y，再积分，得到的代价就是交叉熵。",
    "o.explain": (
        "用二次代价时 ∂C/∂b = (a − y)σ'(z)，正是 σ'(z) 让神经元停滞。那就要求梯度里没有它：∂C/∂b = a − y"
        "（x = 1 时 ∂C/∂w 也是 a − y），再找出具有这个梯度的代价。链式法则给出 ∂C/∂b = ∂C/∂a · σ'(z) = "
        "∂C/∂a · a(1 − a)，所以代价必须满足 ∂C/∂a = (a − y)/(a(1 − a))。拆成部分分式，对 a 积分：得到二元交叉熵，"
        "相差一个常数。如果要求的是二次代价的梯度 (a − y)σ'(z)，同样的积分就还原出 (a − y)²/2：想要的梯度决定了代价。"
        "本次运行对两个积分都做了数值计算（b 从 {lo} 到 {hi}，{num} 个点，梯形法），并与库里的损失对照。"
    ),
    "o.steps": "积分，一步一步",
    "o.check_grad": "库的 ∂L/∂z 对比 a − y：",
    "o.check_integral": "积分 − 库的二元交叉熵，变化幅度：",
    "o.check_fd": "对比有限差分",
    "o.alt": "a − y 对 b 的数值积分与库里三种目标下的二元交叉熵重合",
    "o.h.loss": "要求的梯度",
    "o.h.gives": "它的积分",
    "o.h.spread": "积分 − 库的损失：最大值 − 最小值",
    "o.table_caption": "目标 y = {targets}；积分从 b = 0 开始，所以与损失相差该处的损失值。",
    "o.verdict": (
        "库的 ∂L/∂z 与 a − y 相差不超过 {grad}（有限差分相差不超过 {fd}）；a − y 对 b 的积分等于库的二元交叉熵加一个常数，"
        "误差不超过 {spread}；(a − y)σ'(z) 的积分等于 (a − y)²/2 加一个常数，误差不超过 {mse_spread}。"
    ),
    "o.verdict_bad": "积分没有还原出库里的损失：",
    "fig.origin_title": "∫ (a − y) db 落在二元交叉熵上",
    "fig.bias": "偏置 b（x = 1，w = 0，所以 z = b）",
    "fig.origin_lib": "库的二元交叉熵，y = {y}",
    "fig.origin_int": "∫(a − y) db + 常数",
    "l.short": "为什么是 a − y",
    "l.title": "为什么是 a − y：相互匹配的输出与损失",
    "l.claim": "softmax 输出配合交叉熵时，“∂L/∂zⱼ = aⱼ − yⱼ”：反向传播只是一次减法。",
    "l.explain": (
        "a − y 并不是 sigmoid 碰巧带来的。每种输出函数都有一个与它匹配的损失——用广义线性模型的话说，是它的典范连接"
        "（canonical link）——配上这个损失，对激活前的值 z 的梯度总是“预测减目标”：sigmoid 配二元交叉熵，softmax 配交叉熵，"
        "线性输出 a = z 配平方误差 ½‖a − y‖²。把配对打乱——sigmoid 配平方误差——输出的斜率 σ'(z) 就又回来了。"
        "图中对一个随机批次的每个分量，画出由库的 value_and_grad 得到的 ∂L/∂z（打乱的配对是它的 ∂L/∂a 按链式法则乘以 σ'(z)；"
        "四个配对都用整个损失的有限差分检验）与 a − y 的关系：三个匹配的配对都落在对角线上，"
        "打乱的配对在 sigmoid 饱和处偏离对角线、趋向 0。从同一个角度还能看到曲率：softmax 交叉熵对 z 的二阶导数是 "
        "diag(a) − aaᵀ，即 softmax 分布的协方差（d2l.ai 也指出了这一点），它在任何方向上都不为负：损失对 z 是凸的。"
    ),
    "l.alt": "库的梯度与 a − y 的对比：三个匹配的配对在对角线上，sigmoid 配均方误差在其下方",
    "l.pair.sigmoid_bce": "sigmoid + 二元交叉熵",
    "l.pair.softmax_ce": "softmax + 交叉熵",
    "l.pair.identity_mse": "线性输出 + ½‖a − y‖²",
    "l.pair.sigmoid_mse": "sigmoid + ½(a − y)²（打乱的配对）",
    "l.pair.hessian": "softmax + 交叉熵：对 z 的黑塞矩阵 = diag(a) − aaᵀ",
    "l.h.pair": "输出 + 损失",
    "l.h.gap": "max |∂L/∂z − (a − y)|",
    "l.h.fd": "max |库 − 有限差分|",
    "l.table_caption": "随机批次，种子 {seed}；float64；中心差分步长 h = 1e-6（黑塞矩阵用 1e-5，对库的梯度做差分）。",
    "l.verdict": (
        "三个匹配的配对给出的 ∂L/∂z 与 a − y 相差不超过 {gap}，库里损失的有限差分与之相差不超过 {fd}；"
        "sigmoid 配平方误差与 a − y 最多相差 {mixed}。softmax 交叉熵由有限差分得到的黑塞矩阵与 diag(a) − aaᵀ 相差不超过 {hess}。"
    ),
    "l.verdict_bad": "并非每个配对都如所述：",
    "fig.link_title": "库的 ∂L/∂z 与 a − y",
    "fig.link_x": "a − y",
    "fig.link_y": "∂L/∂z（库）",
    "k.title": "动手试试：交叉熵就是编码长度",
    "k.intro": (
        "交叉熵还有另一种读法，Chris Olah 的《Visual Information Theory》用柱子把它画了出来：H(p, q) 是用为 q 设计的编码，"
        "去传送从 p 中抽出的结果时，消息的平均长度（以奈特计）。最好的编码是为 p 本身设计的，代价是 H(p)，任何模型都改变不了它；"
        "改用 q 要多付 KL(p‖q)。训练模型降低的正是这多出来的部分。"
    ),
    "k.howto": (
        "拖动任意一根柱子的顶端，或者用 Tab 键选中它再按方向键（Home 和 End 键到两端）：同一分布的其他柱子会按比例缩放，"
        "使总和仍为 1；下方的横条把 H(p, q) 分成 H(p) 和 KL(p‖q)。让 q 等于 p，KL 部分就消失了。"
    ),
    "k.static": "起始示例由库计算：H(p) = {h}，KL(p‖q) = {kl}，H(p, q) = {hpq} 奈特（H(p, q) − H(p) − KL(p‖q) = {gap}）。",
    "k.p": "p：数据",
    "k.q": "q：模型",
    "k.outcome": "结果 {i}",
    "k.bar": "{dist}，结果 {i}",
    "k.reset": "回到示例",
    "k.equal": "令 q = p",
    "k.readout": "H(p) = {h} + KL(p‖q) = {kl} → H(p, q) = {hpq} 奈特",
    "k.noscript": "JavaScript 已关闭：柱子显示的是库算出的示例；打开 JavaScript 后可以拖动它们。",
    "h.short": "交叉熵解决不了的问题",
    "h.title": "交叉熵解决不了的问题：饱和的隐藏层",
    "h.explain": (
        "前面所有的 sigmoid 都在输出层，交叉熵约掉的是这个 sigmoid 的斜率——也只有这一个。在输出 a = σ(z₂)，z₂ = hW₂ + b₂ "
        "下面加一层 sigmoid 隐藏单元 h = σ(z₁)，z₁ = xW₁ + b₁。反向传播给隐藏层的是 δ₁ = (δ₂W₂ᵀ) ⊙ σ'(z₁)，"
        "其中 δ₂ = ∂L/∂z₂ 在交叉熵下是 a − y。因子 σ'(z₁) 是隐藏单元自己的斜率：输出端选什么损失都碰不到它。"
        "这里 {hidden} 个隐藏单元学习高斯点云的异或（XOR，{n} 个点，固定随机种子）：单个神经元无法把它们分开，隐藏层必须学习。"
        "把隐藏偏置设为 ±c，就把隐藏单元推进了饱和区。我们先在起点测量两层在不同 c 下的梯度（每个 c 取 {inits} 次随机初始化的中位数），"
        "再从 c = {c0} 和 c = {c1} 出发，两种损失用同一个 η = {lr}，全批量训练 {steps} 步。梯度在 NumPy 中逐项写出"
        "（输出层的 δ₂ 来自库），与有限差分相差不超过 {fd}。Nielsen 在第 3 章也指出了这一点，并在第 5 章作为深层网络的梯度消失问题再次讨论。"
    ),
    "h.alt1": "隐藏层和输出层的梯度范数随隐藏偏置 c 的变化：两种损失下隐藏层的梯度都在下降",
    "h.alt2": "从普通隐藏层和饱和隐藏层出发，两种损失下每一步的训练准确率",
    "h.h.offset": "偏置 c",
    "h.h.sp": "σ'(z₁) 的平均",
    "h.h.sat": "饱和比例（σ' < 0.01）",
    "h.h.hidden": "‖∇ 隐藏层‖，{loss}",
    "h.h.output": "‖∇ 输出层‖，{loss}",
    "h.h.start": "起点",
    "h.h.loss": "损失",
    "h.h.steps": "达到 {p} 训练准确率的步数",
    "h.h.final": "{n} 步后的准确率",
    "h.h.change": "‖W₁ − W₁⁽⁰⁾‖ / ‖W₁⁽⁰⁾‖",
    "h.start.standard": "普通（c = {c}）",
    "h.start.saturated": "饱和（c = {c}）",
    "h.table_caption": "初始化时平均损失的梯度；每个偏置取 {inits} 次随机初始化的中位数。",
    "h.train_caption": "全批量梯度下降，η = {lr}，两种损失从同一组初始权重出发。",
    "h.verdict": (
        "从 c = 0 到 c = {cmax}，隐藏层的梯度在交叉熵下缩小了 {ce_fall} 倍，在均方误差下缩小了 {mse_fall} 倍，"
        "与 σ'(z₁) 的平均缩小 {sp_fall} 倍一致；而交叉熵下输出层的梯度没有缩小（是 c = 0 时的 {out_ratio} 倍）。"
        "从饱和起点出发，交叉熵达到 {p} 训练准确率要 {ce_sat} 步，而不是 {ce_std} 步；均方误差要 {mse_sat} 步，而不是 {mse_std} 步。"
        "交叉熵消除的是输出层的 σ'(z)，而不是隐藏层的。"
    ),
    "h.verdict_holds": "这里交叉熵下隐藏层的梯度没有缩小（从 c = 0 到 c = {cmax} 为 {ce_fall} 倍；均方误差 {mse_fall} 倍）。",
    "fig.hidden_grad_title": "起点的梯度与隐藏层饱和程度",
    "fig.offset": "隐藏偏置 c（单元从 z₁ ≈ ±c 出发）",
    "fig.grad_norm": "梯度范数、σ'(z₁) 的平均（对数）",
    "fig.hidden_layer": "隐藏层，{loss}",
    "fig.output_layer": "输出层，{loss}",
    "fig.mean_sp": "σ'(z₁) 的平均",
    "fig.hidden_train_title": "训练准确率，两种损失用同一个 η",
    "fig.train_acc": "训练准确率",
    "fig.hidden_run": "{loss}，{start}",
    "fig.start.standard": "c = {c}",
    "fig.start.saturated": "c = {c}（饱和）",
    "g.epoch": "轮（epoch）：把训练数据完整过一遍；Nielsen 的例子只有一个训练样本，一轮就是一步梯度下降。",
    "g.canonical": "典范连接（canonical link）：与输出函数匹配的损失（sigmoid ↔ 二元交叉熵，softmax ↔ 交叉熵，线性 ↔ 平方误差），此时 ∂L/∂z = a − y。",
    "g.hidden": "隐藏层：输入和输出之间的单元；它们自己的 σ'(z) 会乘到每个传到它们的梯度上。",
    "g.code": "编码长度：用为 q 设计的编码传送 p 的结果时，平均需要的奈特（或比特）数；它就是 H(p, q)。",
}

STRINGS = {"en": EN, "zh": ZH}


@dataclass(frozen=True)
class Texts:
    """The report's words in one language: ``t("key", **fields)``."""

    lang: str = "en"

    def __post_init__(self) -> None:
        if self.lang not in LANGUAGES:
            raise ValueError(f"Texts: lang must be one of {LANGUAGES}, got {self.lang!r}")

    def __call__(self, key: str, **fields: Any) -> str:
        template = STRINGS[self.lang][key]
        return template.format(**fields) if fields else template

    def keys_with_prefix(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix``, in the order written."""
        return [k for k in STRINGS[self.lang] if k.startswith(prefix)]
