"""The intermediate representation between derivations and printers.

A :class:`KernelRoutine` bundles, for one activation family, everything the
leading-order kernel code needs, as named SymPy expressions:

* the Gaussian-moment block (closed forms in a numerically stable form, or the
  derivatives of phi for Gauss-Hermite quadrature with a node count chosen for
  a stated accuracy);
* the layer map and its Jacobian (from :mod:`symfield.saddle`,
  :mod:`symfield.response`), written in terms of moment symbols;
* the network processes (gamma, beta) per net.

Printers turn it into code or LaTeX; nothing here formats strings.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.integrate
import sympy as sp

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

#: The probe grid on which quadrature accuracy is measured at build time.
QUADRATURE_Q_GRID = (0.01, 0.1, 0.5, 1.0, 2.0, 4.0)
QUADRATURE_TARGET = 1e-10
QUADRATURE_NODE_CHOICES = (16, 24, 32, 48, 64, 96, 128, 160, 200, 256)
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
    """Gauss-Hermite plan: derivatives of phi and phi^2, node count, measured accuracy.

    By Price's theorem every moment is a Gaussian expectation of derivatives:
    d_k^n d_qa^m d_qb^p G = 2^-(m+p) E[phi^(n+2m)(u_a) phi^(n+2p)(u_b)] and
    d_q^n G_d = 2^-n E[(phi^2)^(2n)(u)].
    """

    phis: tuple[sp.Expr, ...]      # phi and its derivatives up to MAX_PHI_ORDER
    squares: tuple[sp.Expr, ...]   # phi^2 and its derivatives up to MAX_PHI_ORDER
    nodes: int
    stated_accuracy: float          # kernel and response moments (G, G_k, G_qa, G_d, G_d_q)
    stated_accuracy_second: float   # second derivatives (G_kk, G_kqa, G_d_qq) for d/d rho
    q_max: float

    @property
    def phi(self) -> sp.Expr:
        return self.phis[0]

    @property
    def dphi(self) -> sp.Expr:
        return self.phis[1]

    @property
    def d2phi(self) -> sp.Expr:
        return self.phis[2]


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


def _gauss_hermite_errors(funcs: list, nodes: int, q: float,
                          references: list[tuple[float, float]]) -> list[float]:
    """Errors of the n-node rule at variance q, each relative to E|integrand|."""
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / np.sqrt(2 * np.pi)
    errors = []
    for func, (ref, scale) in zip(funcs, references, strict=True):
        value = float(np.sum(w * np.broadcast_to(func(np.sqrt(q) * z), z.shape)))
        errors.append(abs(value - ref) / scale)
    return errors


def plan_quadrature(family: Family, expectations: Expectations) -> QuadraturePlan:
    """Choose the Gauss-Hermite node count that meets QUADRATURE_TARGET on the probe grid.

    The integrands are those of the moments the generated code evaluates (phi^2,
    (phi^2)''/2, phi'^2; and for the d/d rho code phi''^2 and (phi^2)''''/4),
    referenced by adaptive (QUADPACK) quadrature; errors are relative to E|integrand| (so a moment
    that happens to vanish does not inflate them). The stated accuracy is the
    worst error measured at the chosen node count, rounded up to a power of 10,
    for each of the two groups; the node count is chosen on the first.
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
    integrands = [squares[0], squares[2] / 2, phis[1] ** 2, phis[2] ** 2, squares[4] / 4]
    numeric = [sp.lambdify(X, f, modules=["numpy", "scipy"]) for f in integrands]
    references: dict[float, list[tuple[float, float]]] = {}
    z_fine, w_fine = np.polynomial.hermite_e.hermegauss(QUADRATURE_NODE_CHOICES[-1])
    w_fine = w_fine / np.sqrt(2 * np.pi)
    for q in QUADRATURE_Q_GRID:
        refs = []
        for fast in numeric:
            # reference: adaptive quadrature (QUADPACK), independent of Gauss-Hermite and
            # accurate to ~1e-14, far below the 1e-10 target it referees
            def density(z: float, fast=fast, q=q) -> float:
                return float(np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi) * fast(np.sqrt(q) * z))

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = sum(scipy.integrate.quad(density, lo, hi, epsabs=0, epsrel=2e-14,
                                               limit=200)[0]
                          for lo, hi in ((-14, -4), (-4, 0), (0, 4), (4, 14)))
            values = np.broadcast_to(fast(np.sqrt(q) * z_fine), z_fine.shape)
            if not np.isfinite(ref) or not np.all(np.isfinite(values)):
                raise GenerationError(
                    f"{family.description}: its Gaussian moments are not "
                    "finite real numbers (is phi real and finite on the real line?)")
            # E|integrand| only sets the scale of the error: the finest rule is enough
            scale = float(np.sum(w_fine * np.abs(values)))
            refs.append((ref, max(scale, abs(ref), 1e-300)))
        references[q] = refs
    first, second = slice(0, 3), slice(3, 5)  # kernel and response moments | d/d rho moments
    errors: dict[int, tuple[float, float]] = {}
    for nodes in QUADRATURE_NODE_CHOICES:
        per_q = [_gauss_hermite_errors(numeric, nodes, q, references[q])
                 for q in QUADRATURE_Q_GRID]
        errors[nodes] = (max(max(e[first]) for e in per_q), max(max(e[second]) for e in per_q))
        if errors[nodes][0] <= QUADRATURE_TARGET:
            break
    met = [n for n in errors if errors[n][0] <= QUADRATURE_TARGET]
    chosen = min(met) if met else min(errors, key=lambda n: errors[n][0])
    stated, stated_second = (float(10.0 ** np.ceil(np.log10(max(e, 1e-16))))
                             for e in errors[chosen])
    return QuadraturePlan(tuple(phis), tuple(squares), chosen, stated, stated_second,
                          max(QUADRATURE_Q_GRID))


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
