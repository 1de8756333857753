"""Activation families and their Gaussian expectations.

A family is one SymPy expression ``phi(x; params)``; special cases are
parameter values (ReLU, |x| and the identity are leaky ReLU with slope 0, -1
and 1). For each family symfield tries to derive the pair expectation
``G(K_aa, K_bb, K_ab) = E[phi(u_a) phi(u_b)]`` in closed form by Price's
theorem (:mod:`symfield.gaussian`); a family the identity table cannot close is
evaluated by composite Gauss-Legendre quadrature (:mod:`symfield.quadrature_rules`)
in the generated code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import sympy as sp
from sympy.parsing.sympy_parser import (
    implicit_multiplication_application,
    parse_expr,
    standard_transformations,
)

from .gaussian import KAA, KAB, KBB, NoClosedForm, Q, X, derivative, expect_pair
from .spec import SpecError

ALPHA = sp.Symbol("alpha", real=True)


@dataclass(frozen=True)
class Family:
    """An activation family: phi(x; params), with a module name for generated code."""

    name: str
    phi: sp.Expr
    params: tuple[sp.Symbol, ...] = ()
    description: str = ""

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)


FAMILIES: dict[str, Family] = {
    "erf": Family("erf", sp.erf(X), description="error function erf(x)"),
    "leaky_relu": Family(
        "leaky_relu", X * (ALPHA + (1 - ALPHA) * sp.Heaviside(X)), (ALPHA,),
        "leaky ReLU max(x,0) + alpha min(x,0); ReLU alpha=0, |x| alpha=-1, identity alpha=1"),
    "tanh": Family("tanh", sp.tanh(X), description="hyperbolic tangent"),
    "gelu": Family("gelu", X * (1 + sp.erf(X / sp.sqrt(2))) / 2,
                   description="GELU x Phi(x) (exact, erf form)"),
    "silu": Family("silu", X / (1 + sp.exp(-X)), description="SiLU / swish x sigmoid(x)"),
}

#: Named members of a family: name -> (family, parameter values).
ALIASES: dict[str, tuple[str, dict[str, float]]] = {
    "relu": ("leaky_relu", {"alpha": 0.0}),
    "abs": ("leaky_relu", {"alpha": -1.0}),
    "linear": ("leaky_relu", {"alpha": 1.0}),
}

#: Activations whose code ships pre-generated in ``generated/``.
BUILTIN = tuple(FAMILIES)


@dataclass(frozen=True)
class Activation:
    """A resolved activation: a family plus values for its parameters."""

    family: Family
    values: tuple[tuple[str, float], ...] = ()
    label: str = ""

    @property
    def param_values(self) -> dict[str, float]:
        return dict(self.values)


def known_names() -> list[str]:
    plain = {name for name, family in FAMILIES.items() if not family.params} | set(ALIASES)
    return sorted(plain) + ["leaky_relu:ALPHA", "expr:<SymPy expression in x>"]


def resolve(text: str) -> Activation:
    """Parse an activation name: ``erf``, ``relu``, ``leaky_relu:0.1``, ``expr:x*tanh(x)``."""
    name = str(text).strip()
    allowed = "must be one of " + ", ".join(known_names())
    if name in ALIASES:
        family, values = ALIASES[name]
        return Activation(FAMILIES[family], tuple(sorted(values.items())), name)
    if name in FAMILIES:
        family = FAMILIES[name]
        if family.params:
            raise SpecError("activation", text, f"{name} needs its parameter, e.g. {name}:0.1")
        return Activation(family, (), name)
    if name.startswith("leaky_relu:"):
        try:
            alpha = float(name.split(":", 1)[1])
        except ValueError:
            raise SpecError("activation", text, "leaky_relu:ALPHA needs a number ALPHA") from None
        if not -1e300 < alpha < 1e300:
            raise SpecError("activation", text, "leaky_relu slope must be finite")
        return Activation(FAMILIES["leaky_relu"], (("alpha", alpha),), name)
    if name.startswith("expr:"):
        return Activation(user_family(name[5:]), (), name)
    raise SpecError("activation", text, allowed)


@functools.lru_cache(maxsize=64)
def user_family(source: str) -> Family:
    """A user's SymPy expression in ``x`` as an activation family (quadrature)."""
    transformations = standard_transformations + (implicit_multiplication_application,)
    try:
        expr = parse_expr(source, local_dict={"x": X}, transformations=transformations)
    except Exception as error:  # noqa: BLE001 - parse errors come in many types
        raise SpecError("activation", f"expr:{source}",
                        f"must be a SymPy expression in x ({error.__class__.__name__})") from None
    if not isinstance(expr, sp.Expr) or expr.free_symbols - {X}:
        raise SpecError("activation", f"expr:{source}",
                        "must be a real expression whose only free symbol is x")
    digest = sp.srepr(expr).encode()
    import hashlib

    tag = hashlib.sha256(digest).hexdigest()[:10]
    return Family(f"user_{tag}", expr, description=f"user expression {sp.sstr(expr)}")


@dataclass(frozen=True)
class Expectations:
    """Gaussian expectations of one family, derived once.

    ``kind`` is ``"exact"`` (closed forms below) or ``"quadrature"`` (only
    ``phi`` and its derivatives, for quadrature code).
    """

    family: Family
    kind: str
    pair: sp.Expr | None = None          # G(K_aa, K_bb, K_ab)
    diag: sp.Expr | None = None          # G(q, q, q) = E[phi(u)^2], u ~ N(0, q)
    phi_derivatives: tuple[sp.Expr, ...] = ()  # phi, phi', phi''

    def pair_moment(self, variables: tuple[sp.Symbol, ...]) -> sp.Expr:
        """A partial derivative of the closed-form G in (K_aa, K_bb, K_ab), simplified."""
        assert self.pair is not None
        return simplify(sp.diff(self.pair, *variables)) if variables else self.pair

    def diag_moment(self, order: int) -> sp.Expr:
        """d^order G_d / dq^order, simplified."""
        assert self.diag is not None
        return simplify(sp.diff(self.diag, Q, order)) if order else self.diag

    def pair_partials(self) -> dict[str, sp.Expr]:
        """dG/dK_ab, dG/dK_aa, dG/dK_bb, simplified."""
        return {name: self.pair_moment((var,))
                for name, var in (("G_k", KAB), ("G_qa", KAA), ("G_qb", KBB))}

    def diag_derivative(self) -> sp.Expr:
        return self.diag_moment(1)


def simplify(expr: sp.Expr) -> sp.Expr:
    """Simplify, then factor polynomial arguments of roots (so per-input factors
    separate) and collect on the transcendental parts (readable, cheap to evaluate)."""
    expr = sp.simplify(expr)
    expr = expr.replace(
        lambda e: e.is_Pow and e.exp.is_Rational and e.exp.q == 2 and e.base.is_polynomial(),
        lambda e: sp.Pow(sp.factor(e.base), e.exp))
    return tidy(expr)


def tidy(expr: sp.Expr) -> sp.Expr:
    """Collect a sum on its function and root atoms, with factored coefficients."""
    atoms = sorted(expr.atoms(sp.Function) | {p for p in expr.atoms(sp.Pow)
                                               if p.exp.is_Rational and p.exp.q == 2},
                   key=sp.default_sort_key)
    if not atoms or not sp.expand(expr).is_Add:
        return expr
    return sp.collect(sp.expand(expr), atoms, func=sp.factor)


def check_finite_moments(family: Family) -> None:
    """Refuse (SpecError) a user's phi whose Gaussian moments do not exist.

    A pole on the real line (``1/x``: SymPy's real singularities, or a non-finite value
    on a grid through 0), or growth faster than a Gaussian can tame
    (``exp(x**2)``: log|phi(u)| / u^2 at |u| = 25 above 0.05, so E[phi^2] diverges
    from variance ~5 on). A closed form from the identity table would otherwise be
    evaluated outside its domain of convergence.
    """
    if family.name in FAMILIES:  # the built-in families are finite by construction
        return
    label = f"expr:{sp.sstr(family.phi)}"
    try:
        poles = sp.calculus.singularities(family.phi, X, sp.S.Reals)
    except (NotImplementedError, TypeError, ValueError):
        poles = sp.S.EmptySet
    if poles not in (sp.S.EmptySet, sp.EmptySet):
        raise SpecError("activation", label, f"phi has poles on the real line ({poles}); "
                        "its Gaussian moments do not exist")
    fn = sp.lambdify(X, family.phi, modules=["numpy", "scipy"])
    grid = np.concatenate([np.linspace(-20, 20, 4001), [25.0, -25.0]])
    with np.errstate(all="ignore"):
        values = np.broadcast_to(np.asarray(fn(grid), dtype=complex), grid.shape)
    finite = np.isfinite(values)
    if not finite[:-2].all():
        bad = grid[:-2][~finite[:-2]][0]
        raise SpecError("activation", label, f"phi is not finite at x = {bad:g}; "
                        "its Gaussian moments do not exist")
    growth = np.log(np.maximum(np.abs(values[-2:]), 1e-300)) / 625.0
    if not finite[-2:].all() or growth.max() > 0.05:
        raise SpecError("activation", label, "phi grows faster than the Gaussian density "
                        "decays (like exp(a x^2)); its Gaussian moments are not finite")


@functools.lru_cache(maxsize=64)
def derive(family: Family) -> Expectations:
    """Derive the Gaussian expectations of ``family`` (closed form if the table allows)."""
    check_finite_moments(family)
    phis = (family.phi, derivative(family.phi), derivative(derivative(family.phi)))
    try:
        pair = simplify(expect_pair(family.phi, family.phi))
    except NoClosedForm:
        return Expectations(family, "quadrature", phi_derivatives=phis)
    diag = simplify(pair.subs({KAB: Q, KAA: Q, KBB: Q}))
    if not diag.is_finite and diag.has(sp.nan, sp.zoo):
        raise NoClosedForm(f"diagonal of {family.name} is singular")
    return Expectations(family, "exact", pair=pair, diag=diag, phi_derivatives=phis)
