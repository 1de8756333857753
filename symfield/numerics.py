"""Numerically stable forms of derived expressions (part of the derivation).

The closed forms SymPy derives are exact but not always good float64 code: at
correlation ``c -> 1`` the Gram determinant ``K_aa K_bb - K_ab^2`` cancels and
``acos(K_ab / sqrt(K_aa K_bb))`` loses half its digits. This module rewrites
an expression, symbolically, into a form that evaluates accurately there:

* every polynomial in ``K_ab^2`` that vanishes at ``|c| = 1`` is written
  through the symbol ``Delta = K_aa K_bb - K_ab^2`` (``K_ab`` drops out), which the
  generated code computes with an error-free product (Dekker) and clamps at 0
  (so ``Delta / sqrt(Delta)`` becomes ``sqrt(Delta)``: no 0/0 at c = 1);
* ``asin(n/d)`` / ``acos(n/d)`` whose argument reaches +-1 on the boundary
  ``|K_ab| = sqrt(K_aa K_bb)`` become ``phi - pi/2`` / ``pi - phi`` with the
  angle ``phi = atan2(sqrt(d^2 - n^2), -n)`` and ``d^2 - n^2`` written in
  ``Delta``; collected with the constants around it, ReLU's
  ``1/4 + asin(c)/(2 pi)`` becomes ``phi/(2 pi)``, accurate at c -> -1 too.

Arguments that stay away from +-1 (erf's ``2K_ab/sqrt((1+2K_aa)(1+2K_bb))``)
are left alone: the check is symbolic, at the boundary.
"""

from __future__ import annotations

import sympy as sp

from .activations import tidy
from .gaussian import KAA, KAB, KBB

#: Gram determinant K_aa K_bb - K_ab^2 (>= 0 for a PSD pair), computed stably.
DELTA = sp.Symbol("Delta")


def in_gram(poly: sp.Expr) -> sp.Expr | None:
    """Write a polynomial in K_ab^2 through Delta; None if K_ab does not drop out."""
    rewritten = sp.expand(sp.expand(poly).subs(KAB**2, KAA * KBB - DELTA))
    return None if rewritten.has(KAB) else sp.factor(rewritten)


def _reaches_unit(arg: sp.Expr) -> bool:
    """Does |arg| reach 1 on the boundary K_ab = +-sqrt(K_aa K_bb)?"""
    at_boundary = arg.subs(KAB, sp.sqrt(KAA) * sp.sqrt(KBB))
    return sp.simplify(sp.Abs(at_boundary) - 1) == 0


def _vanishes_on_boundary(poly: sp.Expr) -> bool:
    return sp.simplify(poly.subs(KAB, sp.sqrt(KAA) * sp.sqrt(KBB))) == 0


def stable_form(expr: sp.Expr) -> sp.Expr:
    """Rewrite ``expr`` (in K_aa, K_bb, K_ab) so it is accurate near |c| = 1."""

    def inverse_trig(e: sp.Expr) -> sp.Expr:
        arg = e.args[0]
        if not arg.has(KAB) or not _reaches_unit(arg):
            return e
        num, den = sp.fraction(sp.together(arg))
        gap = in_gram(den**2 - num**2)
        if gap is None:
            return e
        # the angle to the anti-aligned direction, atan2(sqrt(d^2 - n^2), -n) in [0, pi],
        # is accurate at both ends, so constants that cancel against asin(+-1) fold exactly
        angle = sp.atan2(sp.sqrt(gap), -num)
        return angle - sp.pi / 2 if isinstance(e, sp.asin) else sp.pi - angle

    def gram_poly(e: sp.Expr) -> sp.Expr:
        rewritten = in_gram(e)
        return e if rewritten is None else rewritten

    def is_gram_poly(e: sp.Expr) -> bool:
        # polynomial sums that vanish on the boundary |c| = 1 (there K_aa K_bb - K_ab^2
        # cancels): rewrite through Delta. Sums bounded away from 0 there (erf's
        # (1+2K_aa)(1+2K_bb) - 4K_ab^2 >= 1) are accurate as they are and stay cheap.
        return (e.is_Add and e.has(KAB) and e.is_polynomial(KAB)
                and _vanishes_on_boundary(e) and in_gram(e) is not None)

    expr = expr.replace(lambda e: isinstance(e, (sp.asin, sp.acos)), inverse_trig)
    return tidy(expr.replace(is_gram_poly, gram_poly))


# -- the Gram determinant as a layer-loop state -------------------------------------------
#: sqrt(K_aa), sqrt(K_bb): the state at coincidence is K_ab = s_a s_b.
SA, SB = sp.symbols("s_a s_b", positive=True)
#: Distance to the boundary, D = sqrt(K_aa K_bb) - K_ab, computed as Delta / (s_a s_b + K_ab)
#: for K_ab > 0 (no cancellation as c -> 1) and directly otherwise.
GAP = sp.Symbol("D", nonnegative=True)
#: The angle theta = atan2(sqrt(Delta), K_ab) and the excess W = sqrt(Delta) - K_ab theta
#: = r (sin theta - theta cos theta) >= 0, which is O(theta^3) at c -> 1.
THETA = sp.Symbol("theta", nonnegative=True)
EXCESS = sp.Symbol("W", nonnegative=True)
#: The same two at the other boundary c -> -1 (the angle to the anti-aligned direction):
#: D_m = sqrt(K_aa K_bb) + K_ab, W_m = sqrt(Delta) + K_ab atan2(sqrt(Delta), -K_ab).
GAP_M = sp.Symbol("D_m", nonnegative=True)
EXCESS_M = sp.Symbol("W_m", nonnegative=True)
#: What the helper symbols stand for (for checks and the mpmath path).
GRAM_HELPERS = {
    SA: sp.sqrt(KAA), SB: sp.sqrt(KBB),
    GAP: sp.sqrt(KAA * KBB) - KAB,
    EXCESS: sp.sqrt(DELTA) - KAB * sp.atan2(sp.sqrt(DELTA), KAB),
    GAP_M: sp.sqrt(KAA * KBB) + KAB,
    EXCESS_M: sp.sqrt(DELTA) + KAB * sp.atan2(sp.sqrt(DELTA), -KAB),
}


def stable_gram(expr: sp.Expr) -> sp.Expr | None:
    """:func:`stable_gram_side` for K_ab >= 0 (c -> 1) and K_ab < 0 (c -> -1), as one
    Piecewise; None if either side has no stable form."""
    plus, minus = stable_gram_side(expr, 1), stable_gram_side(expr, -1)
    if plus is None or minus is None:
        return None
    return sp.Piecewise((plus, KAB >= 0), (minus, True))


def stable_gram_side(expr: sp.Expr, side: int = 1) -> sp.Expr | None:
    """Rewrite the Gram map Delta' (moments substituted) so it is accurate near |c| = 1.

    ``expr`` is Delta' in (K_aa, K_bb, K_ab, Delta) with the stable closed forms of
    G and G_d substituted. The angle atan2(sqrt(Delta), -K_ab) becomes pi - theta and
    sqrt(Delta) becomes W + K_ab theta; if theta then drops out (ReLU family: G =
    kappa K_ab + c W), Delta' is a polynomial in (K_aa, K_bb, K_ab, W, Delta). K_ab^2
    is reduced to K_aa K_bb - Delta, leaving a + b K_ab; the part of it that survives
    at Delta = W = 0 is written as (a0 + b0 s_a s_b) - b0 D with the first bracket
    factored in s_a, s_b (it vanishes, exactly, at K_aa = K_bb). Every remaining
    term carries Delta, W or D, each computed without cancellation, so Delta = 0 at
    coinciding inputs maps to exactly 0. Returns None when the expression has
    another form (e.g. erf's asin): then the loop recomputes Delta' from K'.

    ``side = -1`` is the same at the other boundary K_ab = -s_a s_b (c -> -1, where
    an even phi such as |x| maps anti-aligned inputs onto coinciding ones): there
    the angle itself is small, sqrt(Delta) = W_m - K_ab theta and D_m = s_a s_b + K_ab.
    """
    angle = sp.atan2(sp.sqrt(DELTA), -KAB)
    excess, gap, sign = (EXCESS, GAP, 1) if side == 1 else (EXCESS_M, GAP_M, -1)
    e = expr.xreplace({angle: sp.pi - THETA if side == 1 else THETA})
    e = e.xreplace({sp.sqrt(DELTA): excess + sign * KAB * THETA})
    e = sp.expand(e)
    state = (KAA, KBB, KAB, excess, DELTA)
    if e.has(THETA) or e.atoms(sp.Function) or not e.is_polynomial(*state):
        return None
    rest = sp.rem(sp.Poly(e, KAB), sp.Poly(KAB**2 - (KAA * KBB - DELTA), KAB))
    a, b = (sp.expand(rest.coeff_monomial(KAB**n)) for n in (0, 1))
    small = {excess: 0, DELTA: 0}
    a0, b0 = a.subs(small), b.subs(small)
    # K_ab = sign (s_a s_b - D): the boundary value plus a multiple of the gap D
    at_boundary = _product_and_gap(sp.expand((a0 + sign * b0 * SA * SB).subs(
        {KAA: SA**2, KBB: SB**2})))
    tail = sp.expand(a - a0 + (b - b0) * KAB)
    return (at_boundary - sign * sp.factor(b0) * gap
            + sp.collect(tail, [DELTA, excess], func=sp.factor))


def _product_and_gap(poly: sp.Expr) -> sp.Expr:
    """A symmetric polynomial in s_a, s_b as sum_j A_j(s_a s_b) (s_a - s_b)^(2j).

    The j = 0 term is its value at s_a = s_b with factored coefficients, so a value
    that vanishes there for a parameter (|x| at c = -1: a factor (alpha + 1)^2)
    vanishes exactly, and every other term carries (s_a - s_b)^2.
    """
    from sympy.polys.polyfuncs import symmetrize

    e1, e2, gap = sp.symbols("e1 e2 v", positive=True)
    symmetric, remainder, _ = symmetrize(poly, SA, SB, formal=True, symbols=[e1, e2])
    symmetric = sp.expand(symmetric)
    if remainder != 0 or any(m[0] % 2 for m in sp.Poly(symmetric, e1).monoms()):
        return sp.factor(poly)
    # (s_a + s_b)^2 = (s_a - s_b)^2 + 4 s_a s_b
    in_gap = sp.expand(symmetric.subs(e1, sp.sqrt(gap + 4 * e2)))
    collected = sp.collect(in_gap, gap, evaluate=False)
    return sp.Add(*[sp.factor(coeff.subs(e2, SA * SB)) * power.subs(gap, (SA - SB) ** 2)
                    for power, coeff in sorted(collected.items(), key=sp.default_sort_key)])


def unfold_gram(expr: sp.Expr) -> sp.Expr:
    """Replace the helper symbols of :func:`stable_gram` by what they stand for."""
    return expr.xreplace(GRAM_HELPERS)


def gram_step(G: sp.Expr, G_d: sp.Expr) -> tuple[sp.Expr, sp.Expr | None]:
    """The Gram map of one layer for closed-form moments: (as derived, stable form).

    ``G`` is the stable closed form of E[phi(u_a) phi(u_b)] in (K_aa, K_bb, K_ab,
    Delta), ``G_d`` that of E[phi(u)^2] in q. The map is
    :attr:`symfield.saddle.LayerMap.gram` (generic process gamma, beta) with the
    moments substituted; the stable form is :func:`stable_gram` of it (None if
    there is none), checked against the derived map at sample points.
    """
    from .action import G_D as G_D_FN
    from .action import G as G_FN
    from .gaussian import Q
    from .saddle import derive_layer_map

    derived = derive_layer_map().gram.subs({
        G_FN(KAA, KBB, KAB): G, G_D_FN(KAA): G_d.subs(Q, KAA), G_D_FN(KBB): G_d.subs(Q, KBB)})
    stable = stable_gram(derived)
    if stable is not None:
        _check_same(derived, stable)
    return derived, stable


def _check_same(derived: sp.Expr, stable: sp.Expr) -> None:
    """The stable form equals the derived map at sample points (else a derivation bug)."""
    points = [tuple(sp.Rational(v) for v in p) for p in (
        ("0.7", "1.3", "0.4"), ("2", "0.5", "-0.9"), ("1", "1", "0.999"), ("0.3", "0.3", "-0.29"))]
    unfolded = unfold_gram(stable)
    others = sorted((derived.free_symbols | unfolded.free_symbols) - {KAA, KBB, KAB, DELTA},
                    key=str)
    for i, (qa, qb, k) in enumerate(points):
        values = {KAA: qa, KBB: qb, KAB: k, DELTA: qa * qb - k * k}
        values.update({s: sp.Rational(3 + i + j, 7) for j, s in enumerate(others)})
        a, b = (sp.N(e.xreplace(values), 30) for e in (derived, unfolded))
        if abs(a - b) > 1e-20 * (1 + abs(a)):
            raise ValueError(f"stable Gram map differs from the derived one at {values}: "
                             f"{a} != {b}")
