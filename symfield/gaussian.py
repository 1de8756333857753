"""Gaussian-expectation identities: Price's theorem and a small table.

For a centred bivariate Gaussian ``(u_a, u_b)`` with covariance
``[[K_aa, K_ab], [K_ab, K_bb]]`` this module computes ``E[F(u_a) G(u_b)]`` in
closed form without ``sympy.integrate``:

* Price's theorem, ``d/dK_ab E[F G] = E[F' G']``, integrated in ``K_ab`` from
  0 (where the pair is independent and the expectation factorises);
* identities for the integrands it produces: Gaussian exponentials
  ``E[exp(-u^T M u / 2)] = det(1 + K M)^(-1/2)`` and the density at the origin
  ``E[delta(u_a) delta(u_b)] = 1 / (2 pi sqrt(det K))``;
* a table of antiderivatives in ``K_ab``, each verified by differentiation.

Whatever the table cannot express raises :class:`NoClosedForm`, which sends the
activation to Gauss-Hermite quadrature instead.
"""

from __future__ import annotations

import sympy as sp

#: The variable of an activation function, phi(x).
X = sp.Symbol("x", real=True)
#: Entries of a 2 x 2 covariance: variances (positive) and covariance.
KAA = sp.Symbol("K_aa", positive=True)
KBB = sp.Symbol("K_bb", positive=True)
KAB = sp.Symbol("K_ab", real=True)
#: A single variance (the diagonal of a kernel).
Q = sp.Symbol("q", positive=True)

_KAPPA = sp.Dummy("kappa", real=True)  # integration variable in K_ab
MAX_PRICE_DEPTH = 3


class NoClosedForm(Exception):
    """The identity table has no closed form for this expectation."""


def _split_terms(expr: sp.Expr) -> list[tuple[sp.Expr, sp.Expr]]:
    """Split ``expr`` into (coefficient free of x, factor in x) terms."""
    terms = []
    for term in sp.Add.make_args(sp.expand(expr)):
        coeff, factor = term.as_independent(X, as_Add=False)
        terms.append((coeff, factor))
    return terms


def _drop_x_delta(expr: sp.Expr) -> sp.Expr:
    """``x**n * DiracDelta(x) = 0`` for n >= 1 (inside an expectation)."""
    def is_zero_term(term: sp.Expr) -> bool:
        factors = sp.Mul.make_args(term)
        has_delta = any(isinstance(f, sp.DiracDelta) for f in factors)
        has_x = any(f == X or (f.is_Pow and f.base == X and f.exp.is_positive) for f in factors)
        return has_delta and has_x
    return sp.Add(*[t for t in sp.Add.make_args(sp.expand(expr)) if not is_zero_term(t)])


def derivative(phi: sp.Expr) -> sp.Expr:
    """phi'(x), with distributional terms x*delta(x) removed (expanded only if any)."""
    result = sp.diff(phi, X)
    return _drop_x_delta(result) if result.has(sp.DiracDelta) else result


def _exp_rate(factor: sp.Expr) -> sp.Expr | None:
    """If factor == exp(-m x^2 / 2) return m, else None."""
    if isinstance(factor, sp.exp):
        arg = sp.expand(factor.args[0])
        poly = sp.Poly(arg, X) if arg.is_polynomial(X) else None
        if (poly is not None and poly.degree() == 2 and arg.coeff(X, 1) == 0
                and arg.coeff(X, 0) == 0):
            return -2 * arg.coeff(X, 2)
    return None


def expect_1d(phi: sp.Expr, q: sp.Expr = Q) -> sp.Expr:
    """E[phi(u)] for u ~ N(0, q), by the identity table."""
    total = sp.Integer(0)
    for coeff, factor in _split_terms(phi):
        total += coeff * _expect_1d_factor(factor, q)
    return total


def _expect_1d_factor(factor: sp.Expr, q: sp.Expr) -> sp.Expr:
    if not factor.has(X):
        return factor
    if sp.simplify(factor.subs(X, -X) + factor) == 0:
        return sp.Integer(0)  # odd
    if factor.is_Pow and factor.base == X and factor.exp.is_integer and factor.exp > 0:
        n = int(factor.exp)
        return sp.Integer(0) if n % 2 else q ** (n // 2) * sp.factorial2(n - 1)
    if factor == sp.Heaviside(X):
        return sp.Rational(1, 2)
    if factor == X * sp.Heaviside(X):
        return sp.sqrt(q / (2 * sp.pi))
    if factor == sp.Abs(X):
        return sp.sqrt(2 * q / sp.pi)
    if factor == sp.DiracDelta(X):
        return 1 / sp.sqrt(2 * sp.pi * q)
    rate = _exp_rate(factor)
    if rate is not None:
        return 1 / sp.sqrt(1 + rate * q)
    raise NoClosedForm(f"no table entry for E[{factor}]")


def expect_pair(phi_a: sp.Expr, phi_b: sp.Expr, depth: int = 0) -> sp.Expr:
    """E[phi_a(u_a) phi_b(u_b)] in closed form (Price's theorem + table)."""
    if depth > MAX_PRICE_DEPTH:
        raise NoClosedForm("Price's theorem did not reach the identity table")
    total = sp.Integer(0)
    for ca, fa in _split_terms(phi_a):
        for cb, fb in _split_terms(phi_b):
            total += ca * cb * _expect_pair_factors(fa, fb, depth)
    return total


def _expect_pair_factors(fa: sp.Expr, fb: sp.Expr, depth: int) -> sp.Expr:
    if not fa.has(X) or not fb.has(X):
        return expect_1d(fa, KAA) * expect_1d(fb, KBB)
    ma, mb = _exp_rate(fa), _exp_rate(fb)
    if ma is not None and mb is not None:
        cov = sp.Matrix([[KAA, KAB], [KAB, KBB]])
        return 1 / sp.sqrt(sp.factor((sp.eye(2) + cov * sp.diag(ma, mb)).det()))
    if fa == sp.DiracDelta(X) and fb == sp.DiracDelta(X):
        return 1 / (2 * sp.pi * sp.sqrt(KAA * KBB - KAB**2))
    # Price: E[F G](K_ab) = E[F] E[G] + int_0^K_ab E[F' G'] dK_ab
    at_zero = expect_1d(fa, KAA) * expect_1d(fb, KBB)
    integrand = expect_pair(derivative(fa), derivative(fb), depth + 1)
    return at_zero + integrate_from_zero(integrand, KAB)


def integrate_from_zero(integrand: sp.Expr, var: sp.Symbol) -> sp.Expr:
    """int_0^var integrand d(var), by the antiderivative table, checked by differentiation."""
    result = sp.Integer(0)
    for term in sp.Add.make_args(sp.expand(integrand)):
        result += _antiderivative(term, var)
    result = result - result.subs(var, 0)
    check = sp.simplify(sp.diff(result, var) - integrand)
    if check != 0:
        raise NoClosedForm(f"antiderivative check failed: residual {check}")
    return result


def _antiderivative(term: sp.Expr, var: sp.Symbol) -> sp.Expr:
    coeff, factor = term.as_independent(var, as_Add=False)
    if not factor.has(var):
        return coeff * factor * var
    if factor.is_polynomial(var):
        return coeff * sp.Poly(factor, var).integrate().as_expr()
    # c / sqrt(A - B var^2)  ->  c/sqrt(B) * asin(sqrt(B) var / sqrt(A))
    if factor.is_Pow and factor.exp == sp.Rational(-1, 2) and factor.base.is_polynomial(var):
        base = sp.expand(factor.base)
        if sp.Poly(base, var).degree() == 2 and base.coeff(var, 1) == 0:
            a, b = base.coeff(var, 0), -base.coeff(var, 2)
            a = sp.factor(a)
            return coeff / sp.sqrt(b) * sp.asin(sp.sqrt(b) * var / sp.sqrt(a))
    # asin(var / s)  ->  var asin(var/s) + sqrt(s^2 - var^2)
    if isinstance(factor, sp.asin):
        ratio = sp.simplify(factor.args[0] / var)
        if not ratio.has(var):
            s = 1 / ratio
            return coeff * (var * factor + sp.sqrt(sp.expand(s**2) - var**2))
    raise NoClosedForm(f"no antiderivative in the table for {term}")
