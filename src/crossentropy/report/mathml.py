"""The article's formulas as MathML, written directly (no library, no script, no network):
Chromium and Firefox render MathML Core natively, and the text stays selectable.

The builders return strings of MathML elements; :data:`DERIVATIONS` lists each derivation
line with the name of the check (in :mod:`crossentropy.experiments.checks`) that tests it.
"""

from __future__ import annotations

from html import escape


def mi(x: str) -> str:
    """An identifier (single letters are italic by default)."""
    return f"<mi>{escape(x)}</mi>"


def mn(x: str) -> str:
    return f"<mn>{escape(x)}</mn>"


def mo(x: str) -> str:
    return f"<mo>{escape(x)}</mo>"


def row(*parts: str) -> str:
    return "<mrow>" + "".join(parts) + "</mrow>"


def frac(num: str, den: str) -> str:
    return f"<mfrac>{num}{den}</mfrac>"


def sub(base: str, index: str) -> str:
    return f"<msub>{base}{index}</msub>"


def sup(base: str, power: str) -> str:
    return f"<msup>{base}{power}</msup>"


def subsup(base: str, index: str, power: str) -> str:
    return f"<msubsup>{base}{index}{power}</msubsup>"


def under(base: str, below: str) -> str:
    return f"<munder>{base}{below}</munder>"


def text(x: str) -> str:
    return f"<mtext>{escape(x)}</mtext>"


def paren(*parts: str) -> str:
    return row(mo("("), *parts, mo(")"))


def bracket(*parts: str) -> str:
    return row(mo("["), *parts, mo("]"))


def math(*parts: str, display: bool = True) -> str:
    """A ``<math>`` element; ``display`` for a formula on its own line."""
    mode = ' display="block"' if display else ""
    return f'<math xmlns="http://www.w3.org/1998/Math/MathML"{mode}>{row(*parts)}</math>'


# -- common pieces --------------------------------------------------------------------------

a, y, z, w, b, x, L = (mi(c) for c in "ayzwbxL")
EQ, MINUS, PLUS, TIMES = mo("="), mo("−"), mo("+"), mo("·")
ONE, TWO = mn("1"), mn("2")
SIGMA = mi("σ")
SIGMA_PRIME = row(SIGMA, '<mo lspace="0" rspace="0">′</mo>', paren(z))
A_1MA = row(a, paren(ONE, MINUS, a))
A_MINUS_Y = row(a, MINUS, y)
LN = row(mi("ln"), "<mo>&#x2061;</mo>")  # "ln" then invisible function application
MSPACE = '<mspace width="1em"/>'


def d(num: str, den: str) -> str:
    """∂num/∂den as a fraction."""
    return frac(row(mo("∂"), num), row(mo("∂"), den))


def s(base: str, index: str) -> str:
    """A subscripted identifier such as a_j."""
    return sub(mi(base), mi(index))


def total(index: str, body: str) -> str:
    """Σ over ``index``."""
    return row(under(mo("∑"), mi(index)), body)


aj, yj, zj, aq, yq, zk = (
    s("a", "j"),
    s("y", "j"),
    s("z", "j"),
    s("a", "q"),
    s("y", "q"),
    s("z", "k"),
)
SOFTMAX_DEF = row(aj, EQ, frac(sup(mi("e"), zj), total("k", sup(mi("e"), zk))))

# -- the article's formulas -----------------------------------------------------------------

BCE_FORM = math(
    L,
    EQ,
    MINUS,
    frac(ONE, mi("n")),
    total(
        "i",
        bracket(
            s("y", "i"),
            LN,
            s("a", "i"),
            PLUS,
            paren(ONE, MINUS, s("y", "i")),
            LN,
            paren(ONE, MINUS, s("a", "i")),
        ),
    ),
)
CE_FORM = math(
    L,
    EQ,
    MINUS,
    frac(ONE, mi("n")),
    total(
        "i",
        total(
            "j", row(sub(mi("y"), row(mi("i"), mi("j"))), LN, sub(mi("a"), row(mi("i"), mi("j"))))
        ),
    ),
)
# One formula per line: a phone has room for one, not two side by side.
LIKELIHOOD_FORM = math(
    L,
    EQ,
    y,
    LN,
    mi("p"),
    paren(x),
    PLUS,
    paren(ONE, MINUS, y),
    LN,
    paren(ONE, MINUS, mi("p"), paren(x)),
) + math(
    mi("H"),
    paren(mi("p"), mo(","), mi("q")),
    EQ,
    MINUS,
    total("x", row(mi("p"), paren(x), mi("log"), "<mo>&#x2061;</mo>", mi("q"), paren(x))),
)
GRADIENTS_FORM = math(text("MSE: "), d(L, w), EQ, paren(A_MINUS_Y), SIGMA_PRIME, x) + math(
    text("BCE: "), d(L, w), EQ, x, paren(A_MINUS_Y)
)
SOFTMAX_FORM = math(d(L, zj), EQ, aj, MINUS, yj)

# -- the derivations, line by line, each with the check that tests it ----------------------

Line = tuple[str | None, str]

DERIVATIONS: dict[str, tuple[Line, ...]] = {
    "sigmoid": (
        (
            None,
            math(
                a, EQ, SIGMA, paren(z), EQ, frac(ONE, row(ONE, PLUS, sup(mi("e"), row(MINUS, z))))
            ),
        ),
        (
            "sigmoid_prime",
            math(
                SIGMA_PRIME,
                EQ,
                frac(
                    sup(mi("e"), row(MINUS, z)),
                    sup(paren(ONE, PLUS, sup(mi("e"), row(MINUS, z))), TWO),
                ),
                EQ,
                A_1MA,
            ),
        ),
    ),
    "mse": (
        (
            None,
            math(
                L, EQ, frac(sup(paren(A_MINUS_Y), TWO), TWO), mo(","), MSPACE, z, EQ, w, x, PLUS, b
            ),
        ),
        ("mse_da", math(d(L, a), EQ, A_MINUS_Y)),
        ("mse_dz", math(d(L, z), EQ, d(L, a), TIMES, d(a, z), EQ, paren(A_MINUS_Y), SIGMA_PRIME)),
        (
            "mse_dw",
            math(d(L, w), EQ, d(L, z), TIMES, d(z, w), EQ, paren(A_MINUS_Y), SIGMA_PRIME, x),
        ),
        ("mse_db", math(d(L, b), EQ, d(L, z), TIMES, d(z, b), EQ, paren(A_MINUS_Y), SIGMA_PRIME)),
    ),
    "bce": (
        (
            None,
            math(
                L,
                EQ,
                MINUS,
                bracket(y, LN, a, PLUS, paren(ONE, MINUS, y), LN, paren(ONE, MINUS, a)),
            ),
        ),
        (
            "bce_da",
            math(
                d(L, a),
                EQ,
                MINUS,
                frac(y, a),
                PLUS,
                frac(row(ONE, MINUS, y), row(ONE, MINUS, a)),
                EQ,
                frac(A_MINUS_Y, A_1MA),
            ),
        ),
        (
            "bce_dz",
            math(
                d(L, z),
                EQ,
                frac(A_MINUS_Y, A_1MA),
                TIMES,
                A_1MA,
                EQ,
                A_MINUS_Y,
            ),
        ),
        ("bce_dw", math(d(L, w), EQ, d(L, z), TIMES, x, EQ, x, paren(A_MINUS_Y))),
        ("bce_db", math(d(L, b), EQ, d(L, z), TIMES, ONE, EQ, A_MINUS_Y)),
    ),
    "softmax": (
        (None, math(SOFTMAX_DEF, mo(","), MSPACE, L, EQ, MINUS, total("q", row(yq, LN, aq)))),
        (
            "softmax_diag",
            math(
                row(mi("q"), EQ, mi("j"), mo(":")),
                MSPACE,
                d(aj, zj),
                EQ,
                frac(
                    row(
                        sup(mi("e"), zj),
                        total("k", sup(mi("e"), zk)),
                        MINUS,
                        sup(mi("e"), zj),
                        sup(mi("e"), zj),
                    ),
                    sup(paren(total("k", sup(mi("e"), zk))), TWO),
                ),
                EQ,
                aj,
                paren(ONE, MINUS, aj),
            ),
        ),
        (
            "softmax_offdiag",
            math(
                row(mi("q"), mo("≠"), mi("j"), mo(":")),
                MSPACE,
                d(aq, zj),
                EQ,
                frac(
                    row(mn("0"), MINUS, sup(mi("e"), s("z", "q")), sup(mi("e"), zj)),
                    sup(paren(total("k", sup(mi("e"), zk))), TWO),
                ),
                EQ,
                MINUS,
                aq,
                aj,
            ),
        ),
        ("ce_da", math(d(L, aq), EQ, MINUS, frac(yq, aq))),
        (
            "softmax_ce_dz_general",
            math(
                d(L, zj),
                EQ,
                total("q", row(d(L, aq), d(aq, zj))),
                EQ,
                MINUS,
                frac(yj, aj),
                aj,
                paren(ONE, MINUS, aj),
                PLUS,
                row(under(mo("∑"), row(mi("q"), mo("≠"), mi("j"))), frac(yq, aq), aq, aj),
                EQ,
                aj,
                total("q", yq),
                MINUS,
                yj,
            ),
        ),
        (
            "softmax_ce_dz",
            math(
                total("q", yq),
                EQ,
                ONE,
                MSPACE,
                mo("⇒"),
                MSPACE,
                d(L, zj),
                EQ,
                aj,
                MINUS,
                yj,
            ),
        ),
    ),
}
"""Each derivation's lines: ``(check name or None for a definition, MathML)``."""

# -- where cross-entropy comes from: integrating the gradient one wants ----------------------

C = mi("C")
ORIGIN: tuple[tuple[str | None, str], ...] = (
    (
        None,
        math(d(C, b), EQ, d(C, a), TIMES, d(a, z), TIMES, d(z, b), EQ, d(C, a), TIMES, A_1MA),
    ),
    (
        "want",
        math(
            d(C, b),
            EQ,
            A_MINUS_Y,
            MSPACE,
            mo("⇒"),
            MSPACE,
            d(C, a),
            EQ,
            frac(A_MINUS_Y, A_1MA),
            EQ,
            MINUS,
            frac(y, a),
            PLUS,
            frac(row(ONE, MINUS, y), row(ONE, MINUS, a)),
        ),
    ),
    (
        "integral",
        math(
            C,
            EQ,
            row(
                '<mo largeop="true">∫</mo>',
                paren(MINUS, frac(y, a), PLUS, frac(row(ONE, MINUS, y), row(ONE, MINUS, a))),
                mi("d"),
                a,
            ),
            EQ,
            MINUS,
            bracket(y, LN, a, PLUS, paren(ONE, MINUS, y), LN, paren(ONE, MINUS, a)),
            PLUS,
            text("const"),
        ),
    ),
)
"""The integration, line by line: ``(check name or None, MathML)``; the checks are
``"want"`` (the library's gradient is a − y) and ``"integral"`` (the numerical integral is
the library's BCE plus a constant)."""
