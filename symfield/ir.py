"""The intermediate representation between derivations and printers.

A :class:`KernelRoutine` bundles, for one activation family, everything the
leading-order kernel code needs, as named SymPy expressions:

* the Gaussian-moment block (closed forms in a numerically stable form, or the
  derivatives of phi for composite Gauss-Legendre quadrature with a node count chosen for
  a stated accuracy);
* the layer map and its Jacobian (from :mod:`symfield.saddle`,
  :mod:`symfield.response`), written in terms of moment symbols;
* the network processes (gamma, beta) per net.

Printers turn it into code or LaTeX; nothing here formats strings.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import sympy as sp

from . import quadrature_rules as rules
from .action import BETA, G_D, GAMMA, PROCESSES, RHO, SB2, SB2_OUT, SW2, SW2_OUT, G
from .activations import Expectations, Family, derive
from .gaussian import KAA, KAB, KBB, Q, X, derivative
from .numerics import DELTA, EXCESS, EXCESS_M, GAP, GAP_M, SA, SB, gram_step, stable_form
from .response import DK, DQ, DQA, DQB, ResponseMap, derive_response_map, derive_tangent_map
from .saddle import LayerMap, derive_layer_map


class GenerationError(Exception):
    """A derived expression cannot become code (free symbol, unmapped function...)."""


#: Gaussian moments and the derivatives they stand for: pair moments of
#: G(K_aa, K_bb, K_ab), diagonal moments of G_d(q). The second derivatives are
#: what the tangent (d / d rho) propagation needs.
PAIR_DERIVATIVES: dict[str, tuple[sp.Symbol, ...]] = {
    "G": (), "G_k": (KAB,), "G_qa": (KAA,), "G_qb": (KBB,),
    "G_kk": (KAB, KAB), "G_kqa": (KAB, KAA), "G_kqb": (KAB, KBB),
}
DIAG_DERIVATIVES: dict[str, tuple[sp.Symbol, ...]] = {"G_d": (), "G_d_q": (Q,), "G_d_qq": (Q, Q)}
MOMENTS = {name: sp.Symbol(name) for name in (*PAIR_DERIVATIVES, *DIAG_DERIVATIVES)}
PAIR_MOMENTS = tuple(PAIR_DERIVATIVES)
DIAG_MOMENTS = tuple(DIAG_DERIVATIVES)

#: Variances at which the quadrature accuracy is measured at build time (1-D moments, and
#: 2-D at c = 0 and c = +-1, where the pair moments reduce to 1-D integrals); they span
#: the trusted range [QUADRATURE_Q_MIN, QUADRATURE_Q_MAX] that the generated code enforces.
QUADRATURE_Q_GRID = (1e-8, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0,
                     1e3, 3e3, 1e4, 3e4, 1e5)
#: Below the grid every structure point lies outside the rule's window: the rule is the
#: density rule for a function analytic there, exact in the limit (a point mass at q = 0).
QUADRATURE_Q_MIN = 0.0
QUADRATURE_Q_MAX = 1e5
#: General pair points (K_aa, K_bb, K_ab), referenced by nested adaptive quadrature (slow,
#: so few here; the tests sweep a wide grid): near the line c -> 1 at moderate variance,
#: and anticorrelated with very unequal variances.
QUADRATURE_PAIR_POINTS = ((30.0, 30.0, 29.9), (1e4, 50.0, -600.0))
QUADRATURE_TARGET = 1e-10
#: Gauss-Legendre nodes per panel tried, smallest first.
QUADRATURE_NODE_CHOICES = (6, 7, 8, 9, 10, 12, 14, 16)
#: Highest derivative of phi (and of phi^2) the quadrature code evaluates.
MAX_PHI_ORDER = 4


@functools.lru_cache(maxsize=1)
def _moment_table() -> tuple[dict, dict]:
    derivatives, functions = {}, {}
    for table, function in ((PAIR_DERIVATIVES, G(KAA, KBB, KAB)), (DIAG_DERIVATIVES, G_D(Q))):
        for name, variables in table.items():
            if variables:
                derivatives[sp.diff(function, *variables)] = MOMENTS[name]
            else:
                functions[function] = MOMENTS[name]
    return derivatives, functions


def moment_symbols(expr: sp.Expr) -> sp.Expr:
    """Replace G(K_aa,K_bb,K_ab), G_d(q) and their derivatives by moment symbols."""
    derivatives, functions = _moment_table()
    expr = expr.xreplace(derivatives).xreplace(functions)
    left = expr.atoms(sp.Derivative)
    if left:
        raise GenerationError(f"moment derivatives without a name: {sorted(map(str, left))}")
    return expr


def pair_price_orders(name: str) -> tuple[int, int, int]:
    """(derivative order of phi at u_a, at u_b, power of 1/2) of a pair moment (Price)."""
    variables = PAIR_DERIVATIVES[name]
    n, m, p = variables.count(KAB), variables.count(KAA), variables.count(KBB)
    return n + 2 * m, n + 2 * p, m + p


@dataclass(frozen=True)
class QuadraturePlan:
    """Composite Gauss-Legendre plan (:mod:`symfield.quadrature_rules`) and its accuracy.

    By Price's theorem every moment is a Gaussian expectation of derivatives:
    d_k^n d_qa^m d_qb^p G = 2^-(m+p) E[phi^(n+2m)(u_a) phi^(n+2p)(u_b)] and
    d_q^n G_d = 2^-n E[(phi^2)^(2n)(u)]. ``scale`` and ``kinks`` place the
    structure points; ``nodes`` is the Gauss-Legendre count per panel;
    ``errors`` the measured worst error per moment (relative to E|integrand|).
    """

    phis: tuple[sp.Expr, ...]      # phi and its derivatives up to MAX_PHI_ORDER
    squares: tuple[sp.Expr, ...]   # phi^2 and its derivatives up to MAX_PHI_ORDER
    nodes: int
    stated_accuracy: float          # kernel and response moments (G, G_k, G_qa, G_d, G_d_q)
    stated_accuracy_second: float   # second derivatives (G_kk, G_kqa, G_d_qq) for d/d rho
    q_max: float
    q_min: float = QUADRATURE_Q_MIN
    scale: float = 1.0
    kinks: tuple[float, ...] = (0.0,)
    errors: tuple[tuple[str, float], ...] = ()
    zero_nonfinite: bool = False    # inf/nan only where phi's derivatives decayed: read as 0

    @property
    def phi(self) -> sp.Expr:
        return self.phis[0]

    @property
    def dphi(self) -> sp.Expr:
        return self.phis[1]

    @property
    def d2phi(self) -> sp.Expr:
        return self.phis[2]

    @property
    def structure(self) -> np.ndarray:
        return rules.structure_points(self.scale, self.kinks)


@dataclass(frozen=True)
class KernelRoutine:
    """Everything the leading-order code generator needs for one family."""

    family: Family
    kind: str
    params: tuple[sp.Symbol, ...]
    pair: dict[str, sp.Expr]          # stable closed forms (exact) in K_aa, K_bb, K_ab, Delta
    diag: dict[str, sp.Expr]          # closed forms in q (exact)
    pair_raw: dict[str, sp.Expr]      # as derived (for docs and the mpmath path)
    layer: dict[str, sp.Expr]         # layer/readout maps and Jacobians in moment symbols
    tangents: dict[str, dict[str, sp.Expr]]  # net -> d/d rho of one layer, moment symbols
    processes: dict[str, tuple[sp.Expr, sp.Expr]]
    quadrature: QuadraturePlan | None
    layer_map: LayerMap
    response_map: ResponseMap
    expectations: Expectations
    #: Delta' = K'_aa K'_bb - K'_ab^2 without cancellation (generic gamma, beta), in
    #: K_aa, K_bb, K_ab, Delta and the helpers of numerics.stable_gram; None where no
    #: stable form exists (the loop then recomputes Delta' from K').
    gram: sp.Expr | None = None

    @property
    def stated_accuracy(self) -> float:
        return self.quadrature.stated_accuracy if self.quadrature else 1e-12


def layer_expressions(layer: LayerMap, response: ResponseMap) -> dict[str, sp.Expr]:
    """Name the layer-map pieces the generated loop evaluates."""
    named = {
        "q_new": layer.diag, "k_new": layer.pair,
        "J_q": response.diag_q, "J_k": response.pair_k,
        "J_qa": response.pair_qa, "J_qb": response.pair_qb,
        "out_q": layer.readout_diag, "out_k": layer.readout_pair,
        "R_q": response.readout_diag_q, "R_k": response.readout_pair_k,
        "R_qa": response.readout_pair_qa, "R_qb": response.readout_pair_qb,
    }
    return {name: moment_symbols(expr) for name, expr in named.items()}


#: Moments in the two accuracy groups: (name, kind, orders) with kind "diag" (order n of
#: (phi^2)^(2n) / 2^n) or "pair" ((i, j) derivative orders of phi at u_a, u_b).
FIRST_GROUP = ("G", "G_k", "G_qa", "G_qb", "G_d", "G_d_q")
SECOND_GROUP = ("G_kk", "G_kqa", "G_kqb", "G_d_qq")


def _numeric(exprs: list[sp.Expr], zero_nonfinite: bool = False) -> list:
    fns = [sp.lambdify(X, e, modules=["numpy", "scipy"]) for e in exprs]
    return [rules.finite_or_zero(f) for f in fns] if zero_nonfinite else fns


def _scalar_vector(exprs: list[sp.Expr]):
    """A fast scalar function u -> array of the expressions' values (for nested QUADPACK)."""
    slow = sp.lambdify(X, list(exprs), modules=["numpy", "scipy"], cse=True)

    def fallback(u: float) -> np.ndarray:
        with np.errstate(all="ignore"):
            values = np.array(slow(np.float64(u)), dtype=float)
        return np.where(np.isfinite(values), values, 0.0)  # decayed (checked by the plan)

    try:
        fast = sp.lambdify(X, list(exprs), modules="math", cse=True)
        fast(0.5)
    except (NameError, TypeError, ValueError, AttributeError, KeyError):
        return fallback

    def call(u: float) -> np.ndarray:
        try:
            return np.array(fast(float(u)), dtype=float)
        except (OverflowError, ValueError, ZeroDivisionError):
            return fallback(u)  # math raises where numpy saturates (exp(-x) at x << 0)
    return call


def _scalar(expr: sp.Expr):
    vector = _scalar_vector([expr])
    return lambda u: float(vector(u)[0])


def activation_scale(phis: list) -> float:
    """phi's own length: 2^round(log2(max|phi'| / max|phi''|)) over |u| <= 20, in [1/16, 16]."""
    u = np.linspace(-20, 20, 4001)
    with np.errstate(all="ignore"):
        d1 = np.abs(np.broadcast_to(phis[1](u), u.shape))
        d2 = np.abs(np.broadcast_to(phis[2](u), u.shape))
    if not (np.all(np.isfinite(d1)) and np.all(np.isfinite(d2))) or d2.max() == 0:
        return 1.0
    if d1.max() == 0:
        return 1.0
    return float(2.0 ** np.clip(np.round(np.log2(d1.max() / d2.max())), -4, 4))


def _references(family: Family, phis: list[sp.Expr], squares: list[sp.Expr], scale: float,
                zero_nonfinite: bool) -> list[tuple[str, tuple, object, object, float]]:
    """(moment, point, f_a, f_b or None, reference) for every measured case.

    References are adaptive QUADPACK integrals (:func:`rules.reference_diag`,
    :func:`rules.reference_pair`), independent of the composite rule.
    """
    numeric_phi = _numeric(phis, zero_nonfinite)
    numeric_sq = _numeric(squares, zero_nonfinite)
    scalar_phi = [_scalar(p) for p in phis]
    scalar_sq = [_scalar(p) for p in squares]
    cache: dict[tuple, float] = {}

    def diag_ref(q: float, key: tuple, f) -> float:
        if key + (q,) not in cache:
            cache[key + (q,)] = rules.reference_diag(q, f, scale)
        return cache[key + (q,)]

    cases = []
    for name in (*FIRST_GROUP, *SECOND_GROUP):
        if name in DIAG_DERIVATIVES:
            order = len(DIAG_DERIVATIVES[name])
            f = numeric_sq[2 * order]
            for q in QUADRATURE_Q_GRID:
                ref = diag_ref(q, ("sq", order), scalar_sq[2 * order]) * 0.5**order
                cases.append((name, (q,), (f, 0.5**order), None, ref))
            continue
        i, j, h = pair_price_orders(name)
        fa, fb = numeric_phi[i], numeric_phi[j]
        sa, sb = scalar_phi[i], scalar_phi[j]
        for q in QUADRATURE_Q_GRID:
            # c = 0: a product of means; c = +-1: u_b = +-u_a (E over u of a symmetric law)
            mean = diag_ref(q, ("phi", i), sa) * diag_ref(q, ("phi", j), sb)
            cases.append((name, (q, q, 0.0), (fa, 0.5**h), fb, mean * 0.5**h))
            for sign in (1.0, -1.0):
                ref = diag_ref(q, ("prod", min(i, j), max(i, j), sign),
                               lambda u, sa=sa, sb=sb, sign=sign: sa(u) * sb(sign * u))
                cases.append((name, (q, q, sign * q), (fa, 0.5**h), fb, ref * 0.5**h))
    orders = sorted({o for name in PAIR_DERIVATIVES for o in pair_price_orders(name)[:2]})
    vector = _scalar_vector([phis[o] for o in range(max(orders) + 1)])
    for point in QUADRATURE_PAIR_POINTS:
        table = rules.reference_pair(*point, vector, vector, scale)
        for name in (*FIRST_GROUP, *SECOND_GROUP):
            if name in PAIR_DERIVATIVES:
                i, j, h = pair_price_orders(name)
                cases.append((name, point, (numeric_phi[i], 0.5**h), numeric_phi[j],
                              table[i, j] * 0.5**h))
    if not all(np.isfinite(c[-1]) for c in cases):
        raise GenerationError(
            f"{family.description}: its Gaussian moments are not finite real numbers "
            "(is phi real and finite on the real line, and E[phi^2] finite?)")
    return cases


def _rule_errors(cases: list, structure: np.ndarray, nodes: int) -> dict[str, float]:
    """Worst error per moment of the n-node rule, relative to E|integrand|."""
    gl = rules.gauss_legendre(nodes)
    worst: dict[str, float] = {}
    with np.errstate(all="ignore"):
        for name, point, (fa, factor), fb, ref in cases:
            if fb is None:
                value = rules.diag_moment(point[0], fa, structure, gl) * factor
                scale = rules.diag_moment(point[0], lambda u, f=fa: np.abs(f(u)),
                                          structure, gl) * factor
            else:
                value = rules.pair_moment(*point, fa, fb, structure, gl) * factor
                scale = rules.pair_moment(*point, lambda u, f=fa: np.abs(f(u)),
                                          lambda u, f=fb: np.abs(f(u)), structure, gl) * factor
            scale = max(float(scale), abs(ref), 1e-300)
            error = abs(float(value) - ref) / scale
            worst[name] = max(worst.get(name, 0.0), error if np.isfinite(error) else np.inf)
    return worst


def check_moments_exist(family: Family, exprs: list[sp.Expr] | None = None) -> bool:
    """Refuse (GenerationError) a phi whose Gaussian moments do not exist or are not finite.

    Detected numerically on |u| <= 1e5 (:func:`rules.nonfinite_means_decayed`): a pole on
    the real line (1/x), or growth that overflows (exp(x^2) beats the Gaussian decay at
    large variance). Returns whether non-finite values occur only where phi's
    derivatives have decayed to 0 (then they are read as 0).
    """
    if exprs is None:
        exprs = [family.phi, family.phi**2]
        for _ in range(MAX_PHI_ORDER):
            exprs += [derivative(exprs[-2]), derivative(exprs[-1])]
    try:
        return rules.nonfinite_means_decayed(_numeric(exprs))
    except ValueError:
        raise GenerationError(
            f"{family.description}: phi or a derivative is not finite on |x| <= 1e5 "
            "(a pole, or growth that overflows float64); its Gaussian moments cannot be "
            f"computed for every variance up to {QUADRATURE_Q_MAX:g}") from None


#: A measured quadrature error above this means the moments are not computable (e.g. an
#: integrable singularity, or a moment that diverges at large variance): refused.
QUADRATURE_REFUSE = 1e-6


def plan_quadrature(family: Family, expectations: Expectations) -> QuadraturePlan:
    """Choose the Gauss-Legendre count per panel that meets QUADRATURE_TARGET everywhere.

    Every moment the generated code evaluates (1-D: G_d, G_d_q, G_d_qq; 2-D: G, G_k,
    G_qa, G_qb, G_kk, G_kqa, G_kqb) is measured over QUADRATURE_Q_GRID (the pair
    moments at c = 0 and c = +-1 from 1-D references, and at QUADRATURE_PAIR_POINTS
    from nested ones) against adaptive QUADPACK; errors are relative to E|integrand|
    (so a moment that happens to vanish does not inflate them). The stated accuracy
    is the worst error at the chosen count, rounded up to a power of 10, for each of
    the two groups (kernel and response moments; second derivatives for d/d rho);
    the count is chosen on both.
    """
    phis = [family.phi]
    squares = [family.phi**2]
    for _ in range(MAX_PHI_ORDER):
        phis.append(derivative(phis[-1]))
        squares.append(derivative(squares[-1]))
    kinks = (sp.DiracDelta, sp.Heaviside, sp.Piecewise, sp.Max, sp.Min, sp.Abs, sp.sign)
    if any(e.has(*kinks) for e in phis + squares):
        # Price's theorem needs four derivatives of phi; branchwise derivatives of a kink
        # drop its delta terms, and the moments would come out silently wrong
        raise GenerationError(
            f"{family.description}: not smooth and not closed by the identity table; "
            "quadrature by Price's theorem needs phi four times differentiable")
    zero_nonfinite = check_moments_exist(family, phis + squares)
    scale = activation_scale(_numeric(phis, zero_nonfinite))
    cases = _references(family, phis, squares, scale, zero_nonfinite)
    structure = rules.structure_points(scale)
    chosen, worst = QUADRATURE_NODE_CHOICES[-1], {}
    for nodes in QUADRATURE_NODE_CHOICES:
        worst = _rule_errors(cases, structure, nodes)
        chosen = nodes
        if max(worst.values()) <= QUADRATURE_TARGET:
            break
    first = max(worst[n] for n in FIRST_GROUP)
    second = max(worst[n] for n in SECOND_GROUP)
    if not max(first, second) <= QUADRATURE_REFUSE:
        name = max(worst, key=lambda n: worst[n])
        raise GenerationError(
            f"{family.description}: the quadrature of {name} misses its adaptive reference "
            f"by {worst[name]:.1g} (relative) for variances in [{QUADRATURE_Q_MIN:g}, "
            f"{QUADRATURE_Q_MAX:g}]; its Gaussian moments are not reliably finite")
    stated, stated_second = (float(10.0 ** np.ceil(np.log10(max(e, 1e-16))))
                             for e in (first, second))
    return QuadraturePlan(tuple(phis), tuple(squares), chosen, stated, stated_second,
                          QUADRATURE_Q_MAX, QUADRATURE_Q_MIN, scale, (0.0,),
                          tuple(sorted(worst.items())), zero_nonfinite)


@functools.lru_cache(maxsize=32)
def kernel_routine(family: Family) -> KernelRoutine:
    """Derive the leading-order kernel routine for ``family``."""
    expectations = derive(family)
    layer_map, response_map = derive_layer_map(), derive_response_map()
    processes = {name: (proc.gamma, proc.beta) for name, proc in PROCESSES.items()}
    if expectations.kind == "exact":
        raw = {name: expectations.pair_moment(variables)
               for name, variables in PAIR_DERIVATIVES.items()}
        pair = {name: stable_form(expr) for name, expr in raw.items()}
        diag = {name: expectations.diag_moment(len(variables))
                for name, variables in DIAG_DERIVATIVES.items()}
        quad = None
        _, gram = gram_step(pair["G"], diag["G_d"])
    else:
        gram = None
        raw, pair, diag = {}, {}, {}
        quad = plan_quadrature(family, expectations)
    tangents = {
        name: {key: moment_symbols(expr)
               for key, expr in derive_tangent_map(gamma, beta, RHO).items()}
        for name, (gamma, beta) in processes.items()
        if RHO in gamma.free_symbols | beta.free_symbols
    }
    routine = KernelRoutine(
        family=family, kind=expectations.kind, params=family.params,
        pair=pair, diag=diag, pair_raw=raw,
        layer=layer_expressions(layer_map, response_map), tangents=tangents,
        processes=processes, quadrature=quad, layer_map=layer_map,
        response_map=response_map, expectations=expectations, gram=gram)
    check_free_symbols(routine)
    return routine


def check_free_symbols(routine: KernelRoutine) -> None:
    """Fail at generation time if an expression uses a symbol that is not an input."""
    params = set(routine.params)
    allowed_pair = {KAA, KBB, KAB, DELTA} | params
    allowed_diag = {Q} | params
    allowed_layer = ({Q, KAA, KBB, KAB, GAMMA, BETA, SW2, SB2, SW2_OUT, SB2_OUT}
                     | set(MOMENTS.values()))
    allowed_tangent = allowed_layer | {RHO, DQ, DQA, DQB, DK}
    groups = [(routine.pair, allowed_pair), (routine.diag, allowed_diag),
              (routine.layer, allowed_layer)]
    groups += [(t, allowed_tangent) for t in routine.tangents.values()]
    if routine.gram is not None:
        allowed_gram = allowed_layer | params | {DELTA, EXCESS, GAP, EXCESS_M, GAP_M, SA, SB}
        groups.append(({"gram": routine.gram}, allowed_gram))
    for group, allowed in groups:
        for name, expr in group.items():
            extra = expr.free_symbols - allowed
            if extra:
                raise GenerationError(f"{routine.family.name}.{name}: free symbols "
                                      f"{sorted(map(str, extra))} are not inputs")
    for gamma, beta in routine.processes.values():
        if (gamma.free_symbols | beta.free_symbols) - {RHO}:
            raise GenerationError("process coefficients may depend on rho only")
