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
