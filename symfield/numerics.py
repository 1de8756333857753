"""Numerically stable forms of derived expressions (part of the derivation).

The closed forms SymPy derives are exact but not always good float64 code: at
correlation ``c -> 1`` the Gram determinant ``K_aa K_bb - K_ab^2`` cancels and
``acos(K_ab / sqrt(K_aa K_bb))`` loses half its digits. This module rewrites
an expression, symbolically, into a form that evaluates accurately there:

* every polynomial in ``K_ab^2`` is written through the symbol
  ``Delta = K_aa K_bb - K_ab^2`` where ``K_ab`` then drops out, which the
  generated code computes with an error-free product (Dekker) and clamps at 0
  (so ``Delta / sqrt(Delta)`` becomes ``sqrt(Delta)``: no 0/0 at c = 1);
* ``asin(n/d)`` / ``acos(n/d)`` whose argument reaches +-1 on the boundary
  ``|K_ab| = sqrt(K_aa K_bb)`` become ``atan2(n, sqrt(d^2 - n^2))`` /
  ``atan2(sqrt(d^2 - n^2), n)`` with ``d^2 - n^2`` written in ``Delta``.

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
        root = sp.sqrt(gap)
        return sp.atan2(num, root) if isinstance(e, sp.asin) else sp.atan2(root, num)

    def gram_poly(e: sp.Expr) -> sp.Expr:
        rewritten = in_gram(e)
        return e if rewritten is None else rewritten

    def is_gram_poly(e: sp.Expr) -> bool:
        # polynomial sums in K_ab^2 that K_ab drops out of: rewrite through Delta, which
        # removes the cancellation K_aa K_bb - K_ab^2 wherever it occurs
        return e.is_Add and e.has(KAB) and e.is_polynomial(KAB) and in_gram(e) is not None

    expr = expr.replace(lambda e: isinstance(e, (sp.asin, sp.acos)), inverse_trig)
    return tidy(expr.replace(is_gram_poly, gram_poly))
