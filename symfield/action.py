"""The action S[C, Ct] of a deep network prior (docs/equations.md).

Given the auxiliary kernel fields ``C^(l)`` the neurons are independent and
each neuron's trajectory is a linear Gaussian process

    h^(0) ~ N(0, K^(0)),   h^(l) = gamma h^(l-1) + beta xi^(l),  xi^(l) ~ N(0, C^(l)),

with ``(gamma, beta) = (1, rho)`` for the ResNet and ``(0, 1)`` for the FFNet:
one family, two parameter choices. Enforcing the definition of ``C`` with the
conjugate fields ``Ct`` gives

    S[C, Ct] = - sum_l tr(Ct^(l) C^(l)) + W(Ct; C),
    W = ln E_{h|C} exp(sum_l tr Ct^(l) f^(l)),  f^(l)_ab = sb2 + sw2 phi(h_a^(l-1)) phi(h_b^(l-1)),

(``Ct`` on the imaginary axis; we keep ``+tr Ct f`` in ``W`` and ``-tr Ct C``
outside). ``W`` is kept as its cumulant series in ``Ct``; the cumulants are
Gaussian moments of ``phi``, written here as the undefined functions
``G`` (two-point, off-diagonal), ``G_d`` (two-point, diagonal) and ``G_4``
(four-point), so the action is activation-agnostic; an activation's closed
forms are substituted later.

For a given (small) number of inputs ``P`` and depth ``L`` the action is an
explicit SymPy expression that the engine can differentiate and expand.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import sympy as sp

#: Two-point Gaussian moment E[phi(u_a) phi(u_b)] of (var_a, var_b, cov_ab).
G = sp.Function("G")
#: Diagonal two-point moment E[phi(u)^2] of var.
G_D = sp.Function("G_d")
#: Four-point moment E[phi(u_1) phi(u_2) phi(u_3) phi(u_4)] of the 10 covariance entries.
G_4 = sp.Function("G_4")

SW2 = sp.Symbol("sigma_w^2", nonnegative=True)
SB2 = sp.Symbol("sigma_b^2", nonnegative=True)
SW2_OUT = sp.Symbol("sigma_{w,out}^2", nonnegative=True)
SB2_OUT = sp.Symbol("sigma_{b,out}^2", nonnegative=True)
RHO = sp.Symbol("rho", nonnegative=True)
GAMMA, BETA = sp.symbols("gamma beta", real=True)


@dataclass(frozen=True)
class NeuronProcess:
    """h^(l) = gamma h^(l-1) + beta xi^(l): the per-neuron process given the fields."""

    name: str
    gamma: sp.Expr
    beta: sp.Expr
    description: str


RESNET = NeuronProcess("resnet", sp.Integer(1), RHO,
                       "h^(l) = h^(l-1) + rho (W^(l) phi(h^(l-1)) + b^(l))")
FFNET = NeuronProcess("ffnet", sp.Integer(0), sp.Integer(1),
                      "h^(l) = W^(l) phi(h^(l-1)) + b^(l)")
#: The family with symbolic (gamma, beta): one recursion for both nets.
GENERIC = NeuronProcess("generic", GAMMA, BETA, "h^(l) = gamma h^(l-1) + beta xi^(l)")
PROCESSES = {"resnet": RESNET, "ffnet": FFNET}


def _sym_matrix(name: str, size: int) -> sp.Matrix:
    """A symmetric matrix of symbols name_ab (a <= b)."""
    entries = {}
    for a, b in itertools.combinations_with_replacement(range(1, size + 1), 2):
        entries[(a, b)] = entries[(b, a)] = sp.Symbol(f"{name}_{a}{b}", real=True)
    return sp.Matrix(size, size, lambda i, j: entries[(i + 1, j + 1)])


def gaussian_moment2(cov: sp.Matrix, a: int, b: int) -> sp.Expr:
    """E[phi(u_a) phi(u_b)] as G / G_d of the covariance entries."""
    if a == b:
        return G_D(cov[a, a])
    lo, hi = min(a, b), max(a, b)
    return G(cov[lo, lo], cov[hi, hi], cov[lo, hi])


class Action:
    """S[C, Ct] for ``n_inputs`` inputs and ``depth`` hidden layers plus a readout field.

    Layers ``1..depth`` carry (sw2, sb2); field ``depth + 1`` is the readout
    with (sw2_out, sb2_out). ``order`` is the highest cumulant of ``W`` kept.
    """

    def __init__(self, process: NeuronProcess, n_inputs: int, depth: int,
                 *, readout: bool = True, order: int = 1):
        if order not in (1, 2):
            raise ValueError("order must be 1 (saddle point) or 2 (Gaussian fluctuations)")
        self.process, self.n_inputs, self.depth, self.order = process, n_inputs, depth, order
        self.n_fields = depth + (1 if readout else 0)
        self.K0 = _sym_matrix("K0", n_inputs)
        self.C = [_sym_matrix(f"C{l}", n_inputs) for l in range(1, self.n_fields + 1)]
        self.Ct = [_sym_matrix(f"Ct{l}", n_inputs) for l in range(1, self.n_fields + 1)]

    # -- the per-neuron process -------------------------------------------------
    def variances(self, fields: list[sp.Matrix] | None = None) -> list[sp.Matrix]:
        """Sigma^(l) = Cov(h^(l), h^(l)) for l = 0..depth, by the process recursion."""
        fields = self.C if fields is None else fields
        sigma = [self.K0]
        for l in range(1, self.depth + 1):
            sigma.append(self.process.gamma**2 * sigma[-1] + self.process.beta**2 * fields[l - 1])
        return sigma

    def cross_covariance(self, l: int, m: int) -> sp.Matrix:
        """Cov(h^(l), h^(m)) = gamma^|l-m| Sigma^(min(l, m))."""
        return self.process.gamma ** abs(l - m) * self.variances()[min(l, m)]

    def _variances_of(self, field: int) -> tuple[sp.Expr, sp.Expr]:
        last = field == self.depth + 1
        return (SW2_OUT, SB2_OUT) if last else (SW2, SB2)

    # -- cumulants of f and the action ------------------------------------------
    def mean(self, field: int) -> sp.Matrix:
        """mu^(l) = E[f^(l)] = sb2 + sw2 <phi phi>_{Sigma^(l-1)} (field index 1-based)."""
        sw2, sb2 = self._variances_of(field)
        sigma = self.variances()[field - 1]
        return sp.Matrix(self.n_inputs, self.n_inputs,
                         lambda a, b: sb2 + sw2 * gaussian_moment2(sigma, a, b))

    def covariance(self, field_l: int, ab: tuple[int, int], field_m: int,
                   cd: tuple[int, int]) -> sp.Expr:
        """Q = Cov(f^(l)_ab, f^(m)_cd): a four-point moment minus the product of means."""
        sw2_l, _ = self._variances_of(field_l)
        sw2_m, _ = self._variances_of(field_m)
        layers = (field_l - 1, field_l - 1, field_m - 1, field_m - 1)
        units = (ab[0], ab[1], cd[0], cd[1])
        cov = sp.Matrix(4, 4, lambda i, j: self.cross_covariance(layers[i], layers[j])[
            units[i], units[j]])
        entries = [cov[i, j] for i in range(4) for j in range(i, 4)]
        mean_l = gaussian_moment2(self.variances()[field_l - 1], *ab)
        mean_m = gaussian_moment2(self.variances()[field_m - 1], *cd)
        return sw2_l * sw2_m * (G_4(*entries) - mean_l * mean_m)

    @functools.cached_property
    def W(self) -> sp.Expr:
        """Cumulant series of W(Ct; C) up to ``order``."""
        pairs = [(a, b) for a in range(self.n_inputs) for b in range(self.n_inputs)]
        w = sp.Integer(0)
        for l in range(1, self.n_fields + 1):
            mu = self.mean(l)
            w += sum(self.Ct[l - 1][a, b] * mu[a, b] for a, b in pairs)
        if self.order >= 2:
            for l, m in itertools.product(range(1, self.n_fields + 1), repeat=2):
                for ab, cd in itertools.product(pairs, repeat=2):
                    w += (sp.Rational(1, 2) * self.Ct[l - 1][ab] * self.Ct[m - 1][cd]
                          * self.covariance(l, ab, m, cd))
        return w

    @functools.cached_property
    def S(self) -> sp.Expr:
        """The action S[C, Ct] = -sum_l tr(Ct^(l) C^(l)) + W(Ct; C)."""
        source = -sum((self.Ct[l] * self.C[l]).trace() for l in range(self.n_fields))
        return source + self.W

    def field_symbols(self, which: str = "C") -> list[sp.Symbol]:
        """Independent field entries (a <= b), layer by layer."""
        mats = self.C if which == "C" else self.Ct
        return [m[a, b] for m in mats for a in range(self.n_inputs)
                for b in range(a, self.n_inputs)]

    # -- stationarity ------------------------------------------------------------
    def saddle_equations(self) -> list[sp.Eq]:
        """dS/dCt = 0 at Ct = 0 (dS/dC = 0 there is solved by Ct = 0: W(0; C) = 0)."""
        at_zero = {ct: 0 for ct in self.field_symbols("Ct")}
        return [sp.Eq(sp.diff(self.S, ct).subs(at_zero), 0) for ct in self.field_symbols("Ct")]

    def solve_saddle(self) -> dict[sp.Symbol, sp.Expr]:
        """Solve the saddle equations field by field; returns C* in terms of K^(0)."""
        solution: dict[sp.Symbol, sp.Expr] = {}
        # dS/dCt^(l)_ab involves C^(l)_ab and fields of earlier layers only (causality),
        # so the equations are solved in layer order.
        for field, eq in zip(self.field_symbols("C"), self.saddle_equations(), strict=True):
            (value,) = sp.solve(eq.subs(solution), field)
            solution[field] = value
        return solution

    def conjugate_saddle_is_zero(self) -> bool:
        """Check dS/dC = 0 at Ct = 0 (so Ct* = 0)."""
        at_zero = {ct: 0 for ct in self.field_symbols("Ct")}
        return all(sp.simplify(sp.diff(self.S, c).subs(at_zero)) == 0
                   for c in self.field_symbols("C"))
