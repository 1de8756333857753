"""One-loop (1/N) expansion of the action S[C, Ct] (docs/equations.md).

Everything here is derived by SymPy from an action; nothing of section 6 is
typed in.

* :func:`loop_expansion` expands ``N S`` around a saddle point to one loop:
  the propagator ``<dz dz>`` is minus the inverse Hessian of ``S`` in all
  fields ``z = (C, Ct)``, and the mean shift of every field is the Wick
  contraction (Isserlis' theorem, :func:`isserlis`) of the field with the
  cubic vertex, ``N <dz_a> = <z_a (1/6) S'''[z, z, z]>_0``. This is the
  perturbative Gaussian integral over ``(dC, dCt)``; it works on any action,
  symbolic or numeric.
* :func:`causal_action` writes down the general action with the MSR causal
  structure of a deep net -- means ``mu_l(C)`` and noise covariances
  ``Q_lm(C)`` that depend on earlier fields only -- in terms of its Taylor
  coefficients ``R = dmu/dC``, ``H = d^2 mu/dC dC``, ``Q`` and ``dQ/dC``;
  :func:`derive_one_loop_structure` expands it with :func:`loop_expansion` and
  returns the propagators and the mean shift as functions of those
  coefficients. The structured form ``V = A Q A^T``,
  ``N <dC> = A [(1/2) H : V + T]``, ``T_l = sum_{m,k} dQ_lm/dC_k A_km``,
  ``A = (I - R)^(-1)`` that the numeric code uses is *checked* against this
  expansion (``tests/test_expansion.py``).
* :func:`field_cumulants` reads ``mu`` and ``Q`` off ``W`` of a concrete
  :class:`~symfield.action.Action` by differentiating in ``Ct``.
* The per-layer Gaussian moments the one-loop terms need (P = 1): for
  ``g = phi^2`` (the field ``C``) and ``g = x^2`` (the hidden kernel
  ``K_hat = (1/N) sum_i h_i h_i``) the one-dimensional moments ``E g(u)`` and
  their derivatives in the variance, and the two-dimensional moments
  ``E[g_i(x) g_j(y)]`` with their partials in ``(Var x, Var y, Cov)`` --
  closed forms where Price's theorem (a polynomial partner) or the polar
  integral (a piecewise homogeneous ``g``, e.g. ReLU) gives them, otherwise
  two-dimensional Gauss-Hermite quadrature with Price's derivatives
  (:func:`nlo_moments`).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import sympy as sp

from .action import Action
from .activations import Family, derive
from .gaussian import Q, X, derivative, expect_1d

# ---------------------------------------------------------------- Wick and Laplace


def isserlis(indices: Sequence[int], cov: sp.Matrix) -> sp.Expr:
    """E[z_i1 ... z_ik] of a centred Gaussian with covariance ``cov`` (sum over pairings)."""
    if len(indices) % 2:
        return sp.Integer(0)
    if not indices:
        return sp.Integer(1)
    first, rest = indices[0], tuple(indices[1:])
    total = sp.Integer(0)
    for j, other in enumerate(rest):
        if cov[first, other] != 0:
            total += cov[first, other] * isserlis(rest[:j] + rest[j + 1:], cov)
    return total


@dataclass(frozen=True)
class LoopResult:
    """One-loop moments of the fields ``x`` (with conjugates ``y``), all times ``N``.

    ``cov`` = N Cov(dx, dx), ``mixed`` = N <dx dy> (the response propagator),
    ``conjugate`` = N <dy dy> (zero for a causal action), ``mean`` = N <dx>.
    """

    cov: sp.Matrix
    mixed: sp.Matrix
    conjugate: sp.Matrix
    mean: sp.Matrix


def loop_expansion(S: sp.Expr, xs: Sequence[sp.Symbol], ys: Sequence[sp.Symbol],
                   point: dict[sp.Symbol, sp.Expr], *, digits: int | None = None,
                   simplify=lambda e: e) -> LoopResult:
    """Expand ``exp(N S)`` around ``point`` (a saddle) to one loop.

    With ``dz = z / sqrt(N)`` the weight is
    ``exp(z^T S'' z / 2 + S'''[z,z,z] / (6 sqrt N) + ...)``; the Gaussian part
    has covariance ``G = -(S'')^(-1)`` (continued analytically to the imaginary
    ``Ct`` axis) and ``N <dz_a> = <z_a S'''[z,z,z] / 6>_G`` by Isserlis'
    theorem; quartic vertices and the square of the cubic one first enter at
    ``O(1/N^2)``. ``digits`` evaluates the derivatives numerically (mpmath
    through ``evalf``) before the inversion.
    """
    z = list(xs) + list(ys)
    n = len(xs)

    def at(expr: sp.Expr) -> sp.Expr:
        value = expr.subs(point)
        return value.evalf(digits) if digits else simplify(value)

    first = [sp.diff(S, v) for v in z]
    second = [[sp.diff(first[i], z[j]) for j in range(len(z))] for i in range(len(z))]
    hessian = sp.Matrix(len(z), len(z), lambda i, j: at(second[i][j]))
    G = -hessian.inv() if digits is None else -hessian.inv(method="LU")
    if digits is None:
        G = G.applyfunc(simplify)
    third: dict[tuple[int, int, int], sp.Expr] = {}
    for i, j, k in itertools.combinations_with_replacement(range(len(z)), 3):
        value = at(sp.diff(second[i][j], z[k]))
        if value != 0:
            third[(i, j, k)] = value
    mean = []
    for a in range(n):
        total = sp.Integer(0)
        for triple, value in third.items():
            multiplicity = len(set(itertools.permutations(triple)))
            total += value * multiplicity * isserlis((a, *triple), G) / 6
        mean.append(simplify(total))
    return LoopResult(cov=G[:n, :n], mixed=G[:n, n:], conjugate=G[n:, n:],
                      mean=sp.Matrix(mean))


# ---------------------------------------------------------- the general causal action


@dataclass(frozen=True)
class CausalAction:
    """S = sum_l y_l (mu_l(x* + u) - x*_l - u_l) + (1/2) sum y_l y_m Q_lm(x* + u) + k3 y^3 / 6.

    Expanded to the order one loop needs, with Taylor coefficients as symbols:
    ``R[l][k]`` (dmu_l/dx_k), ``H[l][j][k]``, ``Q[l][m]``, ``dQ[l][m][k]``.
    ``kind`` sets the causal pattern: ``"resnet"`` (every earlier field, noise
    correlated across fields) or ``"ffnet"`` (the previous field only, noise
    diagonal). The third cumulant ``k3`` is kept to show it drops out.
    """

    S: sp.Expr
    u: tuple[sp.Symbol, ...]
    y: tuple[sp.Symbol, ...]
    R: sp.Matrix
    Q: sp.Matrix
    H: tuple[sp.Matrix, ...]
    dQ: tuple[tuple[tuple[sp.Expr, ...], ...], ...]
    kind: str


def causal_action(n: int, kind: str = "resnet") -> CausalAction:
    """The general action of ``n`` causally ordered fields (see :class:`CausalAction`)."""
    if kind not in ("resnet", "ffnet"):
        raise ValueError(kind)
    u = sp.symbols(f"u1:{n + 1}", real=True)
    y = sp.symbols(f"y1:{n + 1}", real=True)

    def depends(l: int, k: int) -> bool:  # does field l's mean depend on field k?
        return k < l if kind == "resnet" else k == l - 1

    R = sp.Matrix(n, n, lambda l, k: sp.Symbol(f"R_{l + 1}{k + 1}") if depends(l, k) else 0)
    Qm = sp.Matrix(n, n, lambda l, m: sp.Symbol(f"Q_{min(l, m) + 1}{max(l, m) + 1}")
                   if kind == "resnet" or l == m else 0)
    H = tuple(sp.Matrix(n, n, lambda j, k, l=l: sp.Symbol(f"H_{l + 1}_{min(j, k) + 1}"
                                                            f"{max(j, k) + 1}")
                        if depends(l, j) and depends(l, k) else 0) for l in range(n))

    def dq(l: int, m: int, k: int) -> sp.Expr:
        lo, hi = min(l, m), max(l, m)
        if kind == "resnet":
            ok = k < hi  # the pair (f_l, f_m) reads the process up to field max(l, m) - 1
        else:
            ok = l == m and k == l - 1
        return sp.Symbol(f"dQ_{lo + 1}{hi + 1}_{k + 1}") if ok else sp.Integer(0)

    dQ = tuple(tuple(tuple(dq(l, m, k) for k in range(n)) for m in range(n)) for l in range(n))
    k3 = sp.Symbol("kappa3")
    S = sp.Integer(0)
    for l in range(n):
        drift = sum(R[l, k] * u[k] for k in range(n)) + sp.Rational(1, 2) * sum(
            H[l][j, k] * u[j] * u[k] for j in range(n) for k in range(n))
        S += y[l] * (drift - u[l])
        for m in range(n):
            S += sp.Rational(1, 2) * y[l] * y[m] * (Qm[l, m] + sum(dQ[l][m][k] * u[k]
                                                                   for k in range(n)))
    S += k3 * sum(y) ** 3 / 6
    return CausalAction(S, u, y, R, Qm, H, dQ, kind)


@dataclass(frozen=True)
class OneLoopStructure:
    """The one-loop result of :func:`causal_action`, and the structured form beside it."""

    expansion: LoopResult
    A: sp.Matrix          # (I - R)^(-1)
    V: sp.Matrix          # A Q A^T
    tadpole: sp.Matrix    # (1/2) H : V, per field
    T: sp.Matrix          # sum_{m,k} dQ_lm/dC_k A_km, per field
    mean: sp.Matrix       # A (tadpole + T)


def structured_terms(R: sp.Matrix, Qm: sp.Matrix, H, dQ) -> tuple[sp.Matrix, ...]:
    """A, V, tadpole, T and the mean shift of the structured one-loop form."""
    n = R.shape[0]
    A = (sp.eye(n) - R).inv()
    V = A * Qm * A.T
    tad = sp.Matrix([sp.Rational(1, 2) * sum(H[l][j, k] * V[j, k] for j in range(n)
                                             for k in range(n)) for l in range(n)])
    T = sp.Matrix([sum(dQ[l][m][k] * A[k, m] for m in range(n) for k in range(n))
                   for l in range(n)])
    return A, V, tad, T, A * (tad + T)


@functools.lru_cache(maxsize=8)
def derive_one_loop_structure(n: int, kind: str = "resnet") -> OneLoopStructure:
    """Expand the general causal action of ``n`` fields to one loop (symbolically)."""
    action = causal_action(n, kind)
    point = {v: 0 for v in action.u + action.y}
    expansion = loop_expansion(action.S, action.u, action.y, point, simplify=sp.expand)
    A, V, tad, T, mean = structured_terms(action.R, action.Q, action.H, action.dQ)
    return OneLoopStructure(expansion, A, V, tad, T, mean)


# ------------------------------------------------------------- a concrete action


def field_cumulants(action: Action) -> tuple[list[sp.Expr], sp.Matrix]:
    """mu and Q of the action's fields: dW/dCt and d^2 W/dCt dCt at Ct = 0."""
    cts = action.field_symbols("Ct")
    zero = {ct: 0 for ct in cts}
    grads = [sp.diff(action.W, ct) for ct in cts]
    mu = [g.subs(zero) for g in grads]
    Qm = sp.Matrix(len(cts), len(cts), lambda i, j: sp.diff(grads[i], cts[j]).subs(zero))
    return mu, Qm


def action_saddle(action: Action) -> dict[sp.Symbol, sp.Expr]:
    """The saddle point C* (and Ct* = 0) as a substitution."""
    point = {ct: sp.Integer(0) for ct in action.field_symbols("Ct")}
    solution = action.solve_saddle()
    point.update(solution)
    return point


def expand_action(action: Action, values: dict[sp.Symbol, object], *,
                  digits: int = 30) -> LoopResult:
    """One loop of a concrete (small) action at numeric parameter ``values``."""
    S = action.S.subs(values)
    saddle = {k: sp.sympify(v).subs(values) for k, v in action_saddle(action).items()}
    # C* of later layers refers to earlier C symbols only through the solution itself
    for _ in range(action.n_fields):
        saddle = {k: v.subs(saddle) for k, v in saddle.items()}
    return loop_expansion(S, action.field_symbols("C"), action.field_symbols("Ct"), saddle,
                          digits=digits)


# ------------------------------------------------------------ per-layer moments (P = 1)

#: The kinds of per-neuron kernel functions g(h) a field averages (P = 1).
KINDS = ("phi2", "x2")
#: Names of the moment symbols: 1-D moments m(v), m'(v), m''(v).
V_A, V_B, COV = sp.symbols("v_a v_b c_ab", positive=True)
SA, SB, THETA = sp.symbols("s_a s_b theta", positive=True)


def kind_function(family: Family, kind: str) -> sp.Expr:
    """g(x) for a kind: phi(x)^2 or x^2."""
    return family.phi**2 if kind == "phi2" else X**2


@dataclass(frozen=True)
class PairPlan:
    """How E[g_i(x) g_j(y)] and its partials (M, M_va, M_vb, M_k) are computed.

    ``method`` is ``"closed"`` (``exprs`` in v_a, v_b, c_ab and, for polar forms,
    s_a = sqrt(v_a), s_b = sqrt(v_b), theta = acos(c_ab / (s_a s_b)); 1-D
    moments of the other kind appear as the functions m_<kind>_<order>(v)) or
    ``"quadrature"`` (``price``: for each output, the derivative orders
    (i, j) of g_i, g_j and the factor of Price's theorem).
    """

    kinds: tuple[str, str]
    method: str
    exprs: dict[str, sp.Expr]
    price: dict[str, tuple[int, int, sp.Rational]]


#: m_<kind>_<n>(v): the n-th derivative in the variance of E[g(u)], u ~ N(0, v).
def moment_function(kind: str, order: int) -> sp.Function:
    return sp.Function(f"m_{kind}_{order}")


PAIR_OUTPUTS = ("M", "M_va", "M_vb", "M_k")
PRICE_ORDERS = {"M": (0, 0, sp.Integer(1)), "M_va": (2, 0, sp.Rational(1, 2)),
                "M_vb": (0, 2, sp.Rational(1, 2)), "M_k": (1, 1, sp.Integer(1))}


def one_dim_moments(family: Family, kind: str) -> tuple[sp.Expr, ...] | None:
    """(m, m', m'') in Q = the variance, closed form, or None (quadrature)."""
    if kind == "x2":
        base = expect_1d(X**2, Q)
    else:
        expectations = derive(family)
        if expectations.kind != "exact":
            return None
        base = expectations.diag
    return tuple(sp.simplify(sp.diff(base, Q, n)) for n in range(3))


def _homogeneous(g: sp.Expr) -> tuple[int, sp.Expr, sp.Expr] | None:
    """g(x) = x^n (a H(x) + b H(-x)): return (n, a, b), else None."""
    t = sp.Symbol("t", positive=True)
    for n in range(0, 5):
        a = sp.simplify(g.subs(X, t) / t**n)
        b = sp.simplify(g.subs(X, -t) / (-t) ** n)
        if not a.has(t) and not b.has(t) and not a.has(X) and not b.has(X):
            return n, a, b
    return None


def _polar_moment(gi: sp.Expr, gj: sp.Expr) -> sp.Expr | None:
    """E[g_i(x) g_j(y)] for piecewise homogeneous g's by the polar integral.

    x = s_a r cos(t), y = s_b r cos(t - theta), (x, y) ~ N with correlation
    cos(theta): the radial integral is a Gamma function, the angular one a
    trigonometric polynomial over the four sign sectors (theta in [0, pi]).
    """
    hi, hj = _homogeneous(gi), _homogeneous(gj)
    if hi is None or hj is None:
        return None
    (n, a1, b1), (m, a2, b2) = hi, hj
    t = sp.Symbol("t", real=True)
    p = sp.pi
    sectors = ((a1 * a2, THETA - p / 2, p / 2), (a1 * b2, -p / 2, THETA - p / 2),
               (b1 * a2, p / 2, THETA + p / 2), (b1 * b2, THETA + p / 2, 3 * p / 2))
    angular = sum(coef * sp.integrate(sp.cos(t) ** n * sp.cos(t - THETA) ** m, (t, lo, up))
                  for coef, lo, up in sectors if coef != 0)
    radial = 2 ** sp.Rational(n + m, 2) * sp.gamma(sp.Rational(n + m, 2) + 1)
    return sp.simplify(SA**n * SB**m * radial * angular / (2 * p))


def _price_series(gi: sp.Expr, kind_i: str, gj: sp.Expr) -> sp.Expr | None:
    """E[g_i(x) P(y)] for a polynomial P by Price's series in the covariance.

    E[F(x) P(y)] = sum_n c^n / n! E[F^(n)(x)] E[P^(n)(y)] terminates; for an even
    P only even n survive, and E[F^(2k)(x)] = 2^k d^k/dv^k E[F(x)] (heat equation).
    """
    if not gj.is_polynomial(X):
        return None
    poly = sp.Poly(gj, X)
    if any(poly.coeff_monomial(X**d) != 0 for d in range(1, poly.degree() + 1, 2)):
        return None
    total = sp.Integer(0)
    for k in range(poly.degree() // 2 + 1):
        n = 2 * k
        p_n = expect_1d(sp.diff(gj, X, n), V_B)
        total += COV**n / sp.factorial(n) * 2**k * moment_function(kind_i, k)(V_A) * p_n
    return total


@functools.lru_cache(maxsize=32)
def pair_plan(family: Family, kind_i: str, kind_j: str) -> PairPlan:
    """Derive how to evaluate the two-dimensional moments of (g_i, g_j)."""
    gi, gj = kind_function(family, kind_i), kind_function(family, kind_j)
    exprs: dict[str, sp.Expr] = {}
    series = _price_series(gi, kind_i, gj)
    if series is not None:
        exprs["M"] = series
        for name, var in (("M_va", V_A), ("M_vb", V_B), ("M_k", COV)):
            exprs[name] = _rename_derivatives(sp.diff(series, var))
        return PairPlan((kind_i, kind_j), "closed", exprs, {})
    flipped = _price_series(gj, kind_j, gi)
    if flipped is not None:
        swap = {V_A: V_B, V_B: V_A}
        exprs["M"] = flipped.subs(swap, simultaneous=True)
        for name, var in (("M_va", V_A), ("M_vb", V_B), ("M_k", COV)):
            exprs[name] = _rename_derivatives(sp.diff(exprs["M"], var))
        return PairPlan((kind_i, kind_j), "closed", exprs, {})
    polar = {}
    for name, (di, dj, factor) in PRICE_ORDERS.items():
        value = _polar_moment(_nth_derivative(gi, di), _nth_derivative(gj, dj))
        if value is None:
            break
        polar[name] = sp.simplify(factor * value)
    else:
        return PairPlan((kind_i, kind_j), "closed", polar, {})
    return PairPlan((kind_i, kind_j), "quadrature", {}, dict(PRICE_ORDERS))


def _nth_derivative(g: sp.Expr, n: int) -> sp.Expr:
    for _ in range(n):
        g = derivative(g)
    return g


def _rename_derivatives(expr: sp.Expr) -> sp.Expr:
    """d/dv m_<kind>_k(v) -> m_<kind>_(k+1)(v)."""
    def rename(d: sp.Derivative) -> sp.Expr:
        func = d.expr.func
        kind, order = func.__name__[2:].rsplit("_", 1)
        count = sum(c for _, c in d.variable_count)
        return moment_function(kind, int(order) + count)(*d.expr.args)
    return expr.replace(lambda e: isinstance(e, sp.Derivative), rename)
