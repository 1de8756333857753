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
from dataclasses import dataclass

import mpmath
import numpy as np
import sympy as sp

from .action import BETA, G_D, GAMMA, PROCESSES, RHO, SB2, SB2_OUT, SW2, SW2_OUT, G
from .activations import Expectations, Family, derive
from .gaussian import KAA, KAB, KBB, Q, X
from .numerics import DELTA, stable_form
from .response import ResponseMap, derive_response_map
from .saddle import LayerMap, derive_layer_map

#: Moment values as plain symbols (what the generated layer code sees).
MOMENTS = {
    "G": sp.Symbol("G"), "G_k": sp.Symbol("G_k"), "G_qa": sp.Symbol("G_qa"),
    "G_qb": sp.Symbol("G_qb"), "G_d": sp.Symbol("G_d"), "G_d_q": sp.Symbol("G_d_q"),
}
PAIR_MOMENTS = ("G", "G_k", "G_qa", "G_qb")
DIAG_MOMENTS = ("G_d", "G_d_q")

#: The probe grid on which quadrature accuracy is measured at build time.
QUADRATURE_Q_GRID = (0.01, 0.1, 0.5, 1.0, 2.0, 4.0)
QUADRATURE_TARGET = 1e-10
QUADRATURE_NODE_CHOICES = (16, 24, 32, 48, 64, 96, 128, 160, 200, 256)


def moment_symbols(expr: sp.Expr) -> sp.Expr:
    """Replace G(K_aa,K_bb,K_ab), G_d(q) and their derivatives by moment symbols."""
    pair_args = (KAA, KBB, KAB)
    replacements = {
        sp.Derivative(G(*pair_args), KAB): MOMENTS["G_k"],
        sp.Derivative(G(*pair_args), KAA): MOMENTS["G_qa"],
        sp.Derivative(G(*pair_args), KBB): MOMENTS["G_qb"],
        sp.Derivative(G_D(Q), Q): MOMENTS["G_d_q"],
    }
    expr = expr.subs(replacements)
    return expr.subs({G(*pair_args): MOMENTS["G"], G_D(Q): MOMENTS["G_d"]})


class GenerationError(Exception):
    """A derived expression cannot become code (free symbol, unmapped function...)."""


@dataclass(frozen=True)
class QuadraturePlan:
    """Gauss-Hermite plan: phi and its derivatives, node count, measured accuracy."""

    phi: sp.Expr
    dphi: sp.Expr
    d2phi: sp.Expr
    nodes: int
    stated_accuracy: float
    q_max: float


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
    processes: dict[str, tuple[sp.Expr, sp.Expr]]
    quadrature: QuadraturePlan | None
    layer_map: LayerMap
    response_map: ResponseMap
    expectations: Expectations

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


def _gauss_hermite_error(funcs: list, nodes: int, q: float,
                         references: list[tuple[float, float]]) -> float:
    """Worst error of the n-node rule at variance q, relative to E|integrand|."""
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / np.sqrt(2 * np.pi)
    worst = 0.0
    for func, (ref, scale) in zip(funcs, references, strict=True):
        value = float(np.sum(w * np.broadcast_to(func(np.sqrt(q) * z), z.shape)))
        worst = max(worst, abs(value - ref) / scale)
    return worst


def plan_quadrature(family: Family, expectations: Expectations) -> QuadraturePlan:
    """Choose the Gauss-Hermite node count that meets QUADRATURE_TARGET on the probe grid.

    The integrands are the ones the moment blocks use (phi^2, phi'^2 + phi phi'',
    phi'^2), referenced by mpmath quadrature at 25 digits; errors are relative to
    E|integrand| (so a moment that happens to vanish does not inflate them). The
    stated accuracy is the worst error measured at the chosen node count.
    """
    phi, dphi, d2phi = expectations.phi_derivatives
    integrands = [phi**2, dphi**2 + phi * d2phi, dphi**2]
    numeric = [sp.lambdify(X, f, modules=["numpy", "scipy"]) for f in integrands]
    references: dict[float, list[tuple[float, float]]] = {}
    with mpmath.workdps(25):
        for q in QUADRATURE_Q_GRID:
            refs = []
            for f in integrands:
                g = sp.lambdify(X, f, modules="mpmath")

                def density(z, g=g, q=q, absolute=False):
                    value = mpmath.npdf(z) * g(mpmath.sqrt(q) * z)
                    return abs(value) if absolute else value

                cuts = [-mpmath.inf, -5, 0, 5, mpmath.inf]
                ref = mpmath.quad(density, cuts)
                scale = mpmath.quad(lambda z, d=density: d(z, absolute=True), cuts)
                if not isinstance(ref, mpmath.mpf) or not mpmath.isfinite(ref):
                    raise GenerationError(
                        f"{family.description}: its Gaussian moments are not "
                        "finite real numbers (is phi real and finite on the real line?)")
                refs.append((float(ref), max(float(scale), 1e-300)))
            references[q] = refs
    errors = {}
    for nodes in QUADRATURE_NODE_CHOICES:
        errors[nodes] = max(_gauss_hermite_error(numeric, nodes, q, references[q])
                            for q in QUADRATURE_Q_GRID)
        if errors[nodes] <= QUADRATURE_TARGET:
            break
    met = [n for n in errors if errors[n] <= QUADRATURE_TARGET]
    chosen = min(met) if met else min(errors, key=errors.__getitem__)
    stated = float(10.0 ** np.ceil(np.log10(max(errors[chosen], 1e-16))))
    return QuadraturePlan(phi, dphi, d2phi, chosen, stated, max(QUADRATURE_Q_GRID))


@functools.lru_cache(maxsize=32)
def kernel_routine(family: Family) -> KernelRoutine:
    """Derive the leading-order kernel routine for ``family``."""
    expectations = derive(family)
    layer_map, response_map = derive_layer_map(), derive_response_map()
    processes = {name: (proc.gamma, proc.beta) for name, proc in PROCESSES.items()}
    if expectations.kind == "exact":
        raw = {"G": expectations.pair, **expectations.pair_partials()}
        pair = {name: stable_form(expr) for name, expr in raw.items()}
        diag = {"G_d": expectations.diag, "G_d_q": expectations.diag_derivative()}
        quad = None
    else:
        raw, pair, diag = {}, {}, {}
        quad = plan_quadrature(family, expectations)
    routine = KernelRoutine(
        family=family, kind=expectations.kind, params=family.params,
        pair=pair, diag=diag, pair_raw=raw,
        layer=layer_expressions(layer_map, response_map), processes=processes,
        quadrature=quad, layer_map=layer_map, response_map=response_map,
        expectations=expectations)
    check_free_symbols(routine)
    return routine


def check_free_symbols(routine: KernelRoutine) -> None:
    """Fail at generation time if an expression uses a symbol that is not an input."""
    params = set(routine.params)
    allowed_pair = {KAA, KBB, KAB, DELTA} | params
    allowed_diag = {Q} | params
    allowed_layer = ({Q, KAA, KBB, KAB, GAMMA, BETA, SW2, SB2, SW2_OUT, SB2_OUT}
                     | set(MOMENTS.values()))
    for group, allowed in ((routine.pair, allowed_pair), (routine.diag, allowed_diag),
                           (routine.layer, allowed_layer)):
        for name, expr in group.items():
            extra = expr.free_symbols - allowed
            if extra:
                raise GenerationError(f"{routine.family.name}.{name}: free symbols "
                                      f"{sorted(map(str, extra))} are not inputs")
    for gamma, beta in routine.processes.values():
        if (gamma.free_symbols | beta.free_symbols) - {RHO}:
            raise GenerationError("process coefficients may depend on rho only")
