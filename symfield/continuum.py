"""Continuum limit of the ResNet and the optimal residual scaling (docs/equations.md).

With ``t = rho^2 l`` fixed as ``rho -> 0``, the derived ResNet layer map
(:func:`symfield.saddle.derive_layer_map`, ``gamma = 1``, ``beta = rho``)
becomes an ODE ``dK/dt = lim (K^(l) - K^(l-1)) / rho^2`` and the per-layer
Jacobian (:func:`symfield.response.derive_response_map`) a log-response rate
``lim ln(J) / rho^2``. Nothing here is typed in: both limits are taken by
SymPy, and the stationarity condition of

    ln chi_out(T) = ln R(K(T)) + int_0^T rate(K(t)) dt

is ``d/dT ln R(K(T)) + rate(K(T)) = 0``, obtained by differentiating ``ln R``
with ``K(T)`` an undefined function and substituting the ODE for ``dK/dT``.

Numerics (mpmath): the moments of an activation come from its closed forms
(``exact`` families) or from Price's theorem by quadrature (``tanh``, GELU,
...); roots are bracketed on a grid before :func:`mpmath.findroot`; the
diagonal ``t* = int dq / F(q)`` uses :func:`mpmath.quad`; the off-diagonal
trajectory is integrated with a Gragg-Bulirsch-Stoer extrapolation method
(adaptive step and order) written here with mpmath.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import mpmath
import sympy as sp
from mpmath import mp
from sympy.core.function import AppliedUndef

from .action import BETA, G_D, GAMMA, RESNET, RHO, SB2, SW2, SW2_OUT, G
from .activations import Activation, Family, derive, resolve
from .gaussian import KAA, KAB, KBB, Q, X, derivative
from .response import derive_response_map
from .saddle import derive_layer_map
from .spec import SpecError, check_depth, check_kernel, check_real

Mpf = mpmath.mpf
Vector = list[Mpf]

#: Continuum time t = rho^2 l and the final time T of the readout.
TIME = sp.Symbol("t", nonnegative=True)
RESPONSES = ("diagonal", "offdiagonal")
PAIR_STATE = (KAA, KBB, KAB)
#: The ResNet member of the process family (gamma, beta) = (1, rho).
_RESNET = {GAMMA: RESNET.gamma, BETA: RESNET.beta}


# -- symbolic derivation ----------------------------------------------------------------
@dataclass(frozen=True)
class ContinuumEquations:
    """The continuum limit, derived: ODEs, ln-chi rates, readout slopes, stationarity.

    Expressions are in q (diagonal) or (K_aa, K_bb, K_ab) (pair) and the
    undefined moments G, G_d and their derivatives; substitute an activation
    with :func:`specialize`. ``stationarity_*`` is d ln chi_out / dT written as
    a function of the kernel K(T) alone; ``sb2_threshold_diag`` is the value of
    sb2 below which ``stationarity_diag`` is positive (where G_d'' < 0).
    """

    ode_diag: sp.Expr
    ode_pair: tuple[sp.Expr, sp.Expr, sp.Expr]
    rate_diag: sp.Expr
    rate_pair: sp.Expr
    readout_diag: sp.Expr
    readout_pair: sp.Expr
    dlnR_diag: sp.Expr
    dlnR_pair: sp.Expr
    stationarity_diag: sp.Expr
    stationarity_pair: sp.Expr
    sb2_threshold_diag: sp.Expr

    def named(self) -> dict[str, sp.Expr]:
        """All pieces by name (the pair ODE as ode_pair_aa, ode_pair_bb, ode_pair_ab)."""
        out: dict[str, sp.Expr] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, tuple):
                out.update({f"{name}_{s}": v for s, v in zip(("aa", "bb", "ab"), value,
                                                             strict=True)})
            else:
                out[name] = value
        return out


def _moment_atoms(expr: sp.Expr) -> list[sp.Expr]:
    """Derivatives of G / G_d first (outermost), then the applied functions themselves."""
    derivs = [d for d in expr.atoms(sp.Derivative) if d.expr.has(G, G_D)]
    funcs = [f for f in expr.atoms(AppliedUndef) if f.func in (G, G_D)]
    return sorted(derivs, key=sp.default_sort_key) + sorted(funcs, key=sp.default_sort_key)


def _rho_limit(expr: sp.Expr) -> sp.Expr:
    """lim_{rho -> 0} of ``expr`` with the moments held as opaque symbols."""
    atoms = _moment_atoms(expr)
    opaque = {a: sp.Dummy(f"m{i}") for i, a in enumerate(atoms)}
    value = sp.limit(expr.xreplace(opaque), RHO, 0, "+")
    return sp.expand(value.xreplace({d: a for a, d in opaque.items()}))


def _along_flow(expr: sp.Expr, state: Sequence[sp.Symbol],
                ode: Sequence[sp.Expr]) -> sp.Expr:
    """d/dT expr(K(T)) with K(T) undefined functions, dK/dT replaced by the ODE."""
    paths = {s: sp.Function(s.name)(TIME) for s in state}
    moving = expr.subs(paths, simultaneous=True)
    slope = sp.diff(moving, TIME)
    flow = {sp.Derivative(paths[s], TIME): f.subs(paths, simultaneous=True)
            for s, f in zip(state, ode, strict=True)}
    back = {p: s for s, p in paths.items()}
    return slope.subs(flow).subs(back, simultaneous=True).doit()


@functools.lru_cache(maxsize=1)
def continuum_equations() -> ContinuumEquations:
    """Derive the continuum limit from the layer map and its Jacobian (ResNet)."""
    layer, response = derive_layer_map(), derive_response_map()

    def per_unit_time(new: sp.Expr, old: sp.Expr) -> sp.Expr:
        return _rho_limit((new.subs(_RESNET) - old) / RHO**2)

    ode_diag = per_unit_time(layer.diag, Q)
    ode_ab = per_unit_time(layer.pair, KAB)
    ode_pair = (ode_diag.subs(Q, KAA), ode_diag.subs(Q, KBB), ode_ab)
    rate_diag = _rho_limit(sp.log(response.diag_q.subs(_RESNET)) / RHO**2)
    rate_pair = _rho_limit(sp.log(response.pair_k.subs(_RESNET)) / RHO**2)
    readout_diag, readout_pair = response.readout_diag_q, response.readout_pair_k
    dlnR_diag = sp.simplify(_along_flow(sp.log(readout_diag), (Q,), (ode_diag,)))
    dlnR_pair = sp.simplify(_along_flow(sp.log(readout_pair), PAIR_STATE, ode_pair))
    stationarity_diag = dlnR_diag + rate_diag
    (threshold,) = sp.solve(stationarity_diag, SB2)
    return ContinuumEquations(
        ode_diag=ode_diag, ode_pair=ode_pair, rate_diag=rate_diag, rate_pair=rate_pair,
        readout_diag=readout_diag, readout_pair=readout_pair,
        dlnR_diag=dlnR_diag, dlnR_pair=dlnR_pair,
        stationarity_diag=stationarity_diag,
        stationarity_pair=dlnR_pair + rate_pair,
        sb2_threshold_diag=sp.simplify(threshold),
    )


def _param_subs(activation: Activation) -> dict[sp.Symbol, sp.Expr]:
    named = activation.param_values
    return {p: sp.Rational(repr(float(named[p.name]))) for p in activation.family.params}


def specialize(expr: sp.Expr, activation: Activation | str) -> sp.Expr | None:
    """``expr`` with the activation's closed-form G, G_d substituted (None for quadrature)."""
    act = resolve(activation) if isinstance(activation, str) else activation
    closed = derive(act.family)
    if closed.kind != "exact":
        return None
    assert closed.pair is not None and closed.diag is not None
    subs = _param_subs(act)
    value = expr.subs({G(*PAIR_STATE): closed.pair.subs(subs), G_D(Q): closed.diag.subs(subs)})
    value = value.doit()
    for s in (KAA, KBB):  # G_d at K_aa, K_bb (pair ODE)
        value = value.subs(G_D(s), closed.diag.subs(subs).subs(Q, s)).doit()
    return sp.simplify(value)


# -- moments as numbers -----------------------------------------------------------------
#: A moment needed by an expression: ("d", argument, order) or ("p", (i, j, k)),
#: the latter meaning d^(i+j+k) G / dK_aa^i dK_bb^j dK_ab^k.
MomentKey = tuple


def _moment_key(atom: sp.Expr) -> MomentKey:
    if isinstance(atom, sp.Derivative):
        inner, counts = atom.expr, dict(atom.variable_count)
    else:
        inner, counts = atom, {}
    if inner.func == G_D:
        (arg,) = inner.args
        return ("d", arg, int(counts.get(arg, 0)))
    if tuple(inner.args) != PAIR_STATE:
        raise ValueError(f"unexpected moment {atom}")
    return ("p", tuple(int(counts.get(s, 0)) for s in PAIR_STATE))


@dataclass(frozen=True)
class _Compiled:
    """An expression lambdified in (state, sw2, sb2, sw2_out, moments)."""

    fn: Callable[..., Mpf]
    state: tuple[sp.Symbol, ...]
    moments: tuple[MomentKey, ...]

    def __call__(self, moments: _Moments, values: Sequence[Mpf],
                 params: Sequence[Mpf]) -> Mpf:
        env = dict(zip(self.state, values, strict=True))
        args = [moments.value(key, env) for key in self.moments]
        return self.fn(*values, *params, *args)


def _compile(expr: sp.Expr, state: tuple[sp.Symbol, ...]) -> _Compiled:
    atoms = _moment_atoms(expr)
    symbols = [sp.Dummy(f"m{i}") for i in range(len(atoms))]
    opaque = expr.xreplace(dict(zip(atoms, symbols, strict=True)))
    unknown = opaque.free_symbols - set(state) - {SW2, SB2, SW2_OUT} - set(symbols)
    if unknown or opaque.has(sp.Derivative, AppliedUndef):
        raise ValueError(f"cannot evaluate {expr}: free {sorted(map(str, unknown))}")
    fn = sp.lambdify([*state, SW2, SB2, SW2_OUT, *symbols], opaque, modules="mpmath")
    return _Compiled(fn, state, tuple(_moment_key(a) for a in atoms))


@functools.lru_cache(maxsize=1)
def _compiled() -> dict[str, _Compiled]:
    eqs = continuum_equations()
    diag = {"F": eqs.ode_diag, "rate": eqs.rate_diag, "R": eqs.readout_diag,
            "cond": eqs.stationarity_diag}
    pair = {"F_aa": eqs.ode_pair[0], "F_bb": eqs.ode_pair[1], "F_ab": eqs.ode_pair[2],
            "rate_ab": eqs.rate_pair, "R_ab": eqs.readout_pair,
            "cond_ab": eqs.stationarity_pair}
    return {**{k: _compile(v, (Q,)) for k, v in diag.items()},
            **{k: _compile(v, PAIR_STATE) for k, v in pair.items()}}


class _Moments:
    """Numerical G_d^(n)(q) and d^(i,j,k) G at a point, for one activation."""

    def value(self, key: MomentKey, env: dict[sp.Symbol, Mpf]) -> Mpf:
        if key[0] == "d":
            return self.diag(env[key[1]], key[2])
        return self.pair(env[KAA], env[KBB], env[KAB], key[1])

    def diag(self, q: Mpf, order: int) -> Mpf:
        raise NotImplementedError

    def pair(self, kaa: Mpf, kbb: Mpf, kab: Mpf, index: tuple[int, int, int]) -> Mpf:
        raise NotImplementedError


class _ExactMoments(_Moments):
    """Derivatives of the closed forms, lambdified for mpmath."""

    def __init__(self, activation: Activation):
        closed = derive(activation.family)
        assert closed.pair is not None and closed.diag is not None
        subs = _param_subs(activation)
        self._pair_expr, self._diag_expr = closed.pair.subs(subs), closed.diag.subs(subs)

    @functools.lru_cache(maxsize=16)  # noqa: B019 - one instance per activation, cached
    def _diag_fn(self, order: int) -> Callable[[Mpf], Mpf]:
        return sp.lambdify(Q, sp.diff(self._diag_expr, Q, order), modules="mpmath")

    @functools.lru_cache(maxsize=32)  # noqa: B019
    def _pair_fn(self, index: tuple[int, int, int]) -> Callable[..., Mpf]:
        expr = self._pair_expr
        for s, n in zip(PAIR_STATE, index, strict=True):
            expr = sp.diff(expr, s, n)
        return sp.lambdify(PAIR_STATE, expr, modules="mpmath")

    def diag(self, q: Mpf, order: int) -> Mpf:
        return _real(self._diag_fn(order)(q))

    def pair(self, kaa: Mpf, kbb: Mpf, kab: Mpf, index: tuple[int, int, int]) -> Mpf:
        return _real(self._pair_fn(index)(kaa, kbb, kab))


def _real(value: object) -> Mpf:
    if isinstance(value, mpmath.mpc):
        if abs(value.imag) > mp.eps * max(1, abs(value.real)) * 1e3:
            raise ValueError(f"moment is complex: {value}")
        return value.real
    return value  # type: ignore[return-value]


class _QuadratureMoments(_Moments):
    """Moments of a family without closed forms, from ``precision`` quadrature.

    G, G_k, G_qa, G_qb and G_d, G_d' are ``mp_expectations`` of phi. By Price's
    theorem the K-derivatives of G_k = E[phi'(u_a) phi'(u_b)] are the same
    moments of the activation phi' (so G_kk, G_k,qa, G_k,qb come from
    ``mp_expectations`` of phi'), and G_d'' = E[(phi^2)^(4)(u)] / 4, a 1-D
    integral done with ``mpmath.quad``.
    """

    def __init__(self, activation: Activation, dps: int):
        # precision is imported lazily: the exact-family path does not need it
        from .precision import mp_expectations

        phi = activation.family.phi.subs(_param_subs(activation))
        slope = Family(f"{activation.family.name}_d1", derivative(phi),
                       description=f"derivative of {activation.label}")
        self._base = mp_expectations(activation, dps)
        self._slope = mp_expectations(Activation(slope, (), f"({activation.label})'"), dps)
        # Price: d^n/dq^n E[f(u)] = E[f^(2n)(u)] / 2^n, here f = phi^2 and n = 2
        self._gd2_integrand = sp.lambdify(X, sp.diff(sp.expand(phi**2), X, 4) / 4,
                                          modules="mpmath")

    @functools.lru_cache(maxsize=512)  # noqa: B019 - one instance per activation, cached
    def _diag_second(self, q: Mpf) -> Mpf:
        root, fn = mp.sqrt(q), self._gd2_integrand
        integral = mpmath.quad(lambda z: fn(root * z) * mp.exp(-z * z / 2),
                               [-mp.inf, 0, mp.inf])
        return integral / mp.sqrt(2 * mp.pi)

    def diag(self, q: Mpf, order: int) -> Mpf:
        if order == 0:
            return self._base.G_d(q)
        if order == 1:
            return self._base.G_d_q(q)
        if order == 2:
            return self._diag_second(q)
        raise NotImplementedError(f"G_d derivative of order {order}")

    def pair(self, kaa: Mpf, kbb: Mpf, kab: Mpf, index: tuple[int, int, int]) -> Mpf:
        # position in (G, G_k, G_qa, G_qb) of phi (first) and of phi' (second)
        first = {(0, 0, 0): 0, (0, 0, 1): 1, (1, 0, 0): 2, (0, 1, 0): 3}
        second = {(0, 0, 2): 1, (1, 0, 1): 2, (0, 1, 1): 3}
        if index in first:
            return self._base.pair(kaa, kbb, kab)[first[index]]
        if index in second:
            return self._slope.pair(kaa, kbb, kab)[second[index]]
        raise NotImplementedError(f"G derivative {index}")


def _moments(activation: Activation, dps: int) -> _Moments:
    if derive(activation.family).kind == "exact":
        return _exact_moments(activation)
    return _quadrature_moments(activation, dps)


@functools.lru_cache(maxsize=32)
def _exact_moments(activation: Activation) -> _ExactMoments:
    return _ExactMoments(activation)


@functools.lru_cache(maxsize=16)
def _quadrature_moments(activation: Activation, dps: int) -> _QuadratureMoments:
    return _QuadratureMoments(activation, dps)


# -- ODE integration: Gragg-Bulirsch-Stoer ----------------------------------------------
Rhs = Callable[[Vector], Vector]
#: Extrapolation columns the step control aims at (order ~ 2 x 8; cheap per unit time
#: at 15-35 digits).
TARGET_COLUMNS = 8


def _gbs_step(f: Rhs, y: Vector, H: Mpf, tol: Mpf, kmax: int = 14
              ) -> tuple[Vector | None, int, Mpf]:
    """One extrapolated modified-midpoint step of size H (autonomous f).

    Returns (y(t + H), columns used, error estimate), with None for y if the
    table did not converge to ``tol`` (relative to 1 + |y|).
    """
    f0 = f(y)
    rows: list[list[Vector]] = []
    for j in range(1, kmax + 1):
        n = 2 * j
        h = H / n
        z_prev, z = y, [a + h * b for a, b in zip(y, f0, strict=True)]
        for _ in range(1, n):
            z_prev, z = z, [a + 2 * h * b for a, b in zip(z_prev, f(z), strict=True)]
        row = [[(a + b + h * c) / 2 for a, b, c in zip(z, z_prev, f(z), strict=True)]]
        for k in range(1, j):
            factor = mpmath.mpf(n * n) / ((n - 2 * k) ** 2) - 1
            row.append([a + (a - b) / factor
                        for a, b in zip(row[k - 1], rows[-1][k - 1], strict=True)])
        if j > 2:
            err = max(abs(a - b) / (1 + abs(a)) for a, b in zip(row[-1], row[-2], strict=True))
            if err < tol:
                return row[-1], j, err
        rows.append(row)
    return None, kmax, mp.inf


def _step_factor(columns: int, err: Mpf, tol: Mpf) -> Mpf:
    """Next step / this step: move towards TARGET_COLUMNS, then hold the error at tol / 10."""
    if columns < TARGET_COLUMNS - 1:
        return mpmath.mpf("1.5")
    if columns > TARGET_COLUMNS + 1:
        return mpmath.mpf("0.7")
    ratio = (tol / 10 / max(err, mp.eps**2)) ** (mpmath.mpf(1) / (2 * columns - 1))
    return min(mpmath.mpf(3), max(mpmath.mpf("0.5"), ratio))  # err ~ H^(2j - 1)


@dataclass
class _Flow:
    """Adaptive GBS integration of an autonomous ODE, with a suggested next step."""

    f: Rhs
    tol: Mpf
    h: Mpf = field(default_factory=lambda: mpmath.mpf("0.125"))
    h_max: Mpf = field(default_factory=lambda: mpmath.mpf("0.25"))

    def step(self, y: Vector, limit: Mpf) -> tuple[Mpf, Vector]:
        """Advance by at most ``limit``: returns (step taken, new state)."""
        while True:
            size = min(self.h, self.h_max, limit)
            new, columns, err = _gbs_step(self.f, y, size, self.tol)
            if new is not None:
                if size == min(self.h, self.h_max):  # a truncated step says nothing
                    self.h = size * _step_factor(columns, err, self.tol)
                return size, new
            self.h = size / 2
            if self.h < mp.eps ** mpmath.mpf(0.25):
                raise ArithmeticError("ODE step size underflow (stiff or singular flow)")

    def advance(self, y: Vector, duration: Mpf) -> Vector:
        """y after ``duration``, starting from the current step (this flow is not advanced)."""
        flow = _Flow(self.f, self.tol, self.h, self.h_max)
        left = duration
        while left > mp.eps * (1 + duration):
            size, y = flow.step(y, left)
            left -= size
        return y


# -- the optimum ------------------------------------------------------------------------
@dataclass(frozen=True)
class ContinuumOptimum:
    """The continuum optimum of chi_out: kernel, time and rho*(L) = sqrt(t*/L).

    ``K_star`` is q* (diagonal) or (K_aa, K_bb, K_ab) at t* (off-diagonal);
    ``None`` fields and a ``reason`` when no interior maximum exists.
    ``chi_out`` is the continuum chi_out(t*) (times sw2_out); ``residual`` the
    stationarity condition at the optimum; ``dps`` the digits the numbers carry.
    """

    response: str
    K_star: Mpf | tuple[Mpf, Mpf, Mpf] | None
    t_star: Mpf | None
    sqrt_tstar: Mpf | None
    converged: bool
    reason: str
    chi_out: Mpf | None = None
    residual: Mpf | None = None
    dps: int = 15

    def rho_star(self, depth: int) -> Mpf | None:
        """rho*(L) = sqrt(t*/L) (None without an interior optimum)."""
        if self.t_star is None:
            return None
        with mp.workdps(self.dps + 5):
            return mp.sqrt(self.t_star / check_depth("depth", depth))


@dataclass(frozen=True)
class _Problem:
    """Validated inputs as mpf plus the moments of the activation."""

    activation: Activation
    moments: _Moments
    params: tuple[Mpf, Mpf, Mpf]  # sw2, sb2, sw2_out
    K0: tuple[Mpf, ...]           # (q0,) or (K_aa, K_bb, K_ab)

    def eval(self, name: str, values: Sequence[Mpf]) -> Mpf:
        return _compiled()[name](self.moments, values, self.params)

    def pair_flow(self, y: Vector) -> Vector:
        """d/dt of (K_aa, K_bb, K_ab, ln chi_ab)."""
        k = y[:3]
        return [self.eval("F_aa", k), self.eval("F_bb", k), self.eval("F_ab", k),
                self.eval("rate_ab", k)]


def _mpf(value: object) -> Mpf:
    if isinstance(value, mpmath.mpf):
        return +value
    return mp.mpf(repr(float(value)) if isinstance(value, float) else value)  # type: ignore


def _problem(activation: str | Activation, sw2: float, sb2: float, K0: object,
             response: str, sw2_out: float, dps: int) -> _Problem:
    act = resolve(activation) if isinstance(activation, str) else activation
    if response not in RESPONSES:
        raise SpecError("response", response, f"must be one of {', '.join(RESPONSES)}")
    check_real("sw2", sw2, minimum=0.0, strict=True, what="a weight variance")
    check_real("sb2", sb2, minimum=0.0, what="a bias variance")
    check_real("sw2_out", sw2_out, minimum=0.0, strict=True, what="a weight variance")
    if not isinstance(dps, int) or dps < 10:
        raise SpecError("dps", dps, "must be an integer >= 10")
    rows = K0.tolist() if hasattr(K0, "tolist") else K0  # type: ignore[union-attr]
    rows = [list(r) if isinstance(r, (list, tuple)) else [r] for r in rows] if isinstance(
        rows, (list, tuple)) else [[rows]]
    try:
        as_float = [[float(_mpf(v)) for v in row] for row in rows]
    except (TypeError, ValueError):
        raise SpecError("K0", K0, "must be a number or a P x P matrix of numbers") from None
    matrix = check_kernel("K0", as_float)
    if response == "diagonal":
        start: tuple[Mpf, ...] = (_mpf(rows[0][0]),)
    else:
        if matrix.shape != (2, 2):
            raise SpecError("K0", matrix, "the off-diagonal response needs a 2 x 2 kernel")
        kaa, kbb, kab = _mpf(rows[0][0]), _mpf(rows[1][1]), _mpf(rows[0][1])
        if kab * kab >= kaa * kbb:
            raise SpecError("K0", matrix, "needs |K_ab| < sqrt(K_aa K_bb) (correlation < 1)")
        start = (kaa, kbb, kab)
    params = (_mpf(sw2), _mpf(sb2), _mpf(sw2_out))
    return _Problem(act, _moments(act, dps), params, start)


def continuum_optimum(activation: str | Activation, sw2: float, sb2: float, K0: object, *,
                      response: str = "diagonal", sw2_out: float = 1.0, dps: int = 30,
                      t_max: float = 32.0) -> ContinuumOptimum:
    """The continuum optimum t* of chi_out(T) and the kernel there (docs/equations.md).

    ``K0`` is a number or a kernel matrix (diagonal: its [0][0] entry; off-diagonal:
    a 2 x 2 kernel). Numbers may be floats (read as their shortest decimal),
    strings or mpf. ``t_max`` bounds the off-diagonal search (the diagonal one
    runs over q up to 10^4 max(1, q0)).
    """
    check_real("t_max", t_max, minimum=0.0, strict=True, what="the longest time searched")
    act = resolve(activation) if isinstance(activation, str) else activation
    if response != "diagonal" and derive(act.family).kind == "quadrature":
        # the coupled (K_aa, K_bb, K_ab) flow evaluates the mpmath pair quadrature hundreds
        # of times (seconds each): measured > 5 minutes for tanh, so it is refused with the
        # reason rather than left to run without a word
        return _no_optimum(response, (
            "the off-diagonal continuum of an activation without closed-form moments "
            "integrates the coupled flow over mpmath pair quadratures (minutes); not "
            "computed: the exact rho* does not depend on it"))
    with mp.workdps(dps + 5):
        problem = _problem(activation, sw2, sb2, K0, response, sw2_out, dps + 5)
        if response == "diagonal":
            result = _diagonal(problem)
        else:
            result = _offdiagonal(problem, _mpf(t_max))
    return dataclasses.replace(result, dps=dps)


def _no_optimum(response: str, reason: str) -> ContinuumOptimum:
    return ContinuumOptimum(response, None, None, None, False, reason)


@functools.lru_cache(maxsize=32)
def _constant_condition(activation: Activation) -> sp.Expr | None:
    """The diagonal condition if it does not depend on q (e.g. G_d linear), else None."""
    value = specialize(continuum_equations().stationarity_diag, activation)
    if value is None or value.has(Q):
        return None
    return value


def _first_drop(cond: Callable[[Mpf], Mpf], points: Sequence[Mpf]
                ) -> tuple[Mpf, Mpf] | None:
    """The first grid interval on which ``cond`` goes from > 0 to <= 0."""
    previous = cond(points[0])
    for a, b in itertools.pairwise(points):
        current = cond(b)
        if previous > 0 >= current:
            return a, b
        previous = current
    return None


def _diagonal(p: _Problem) -> ContinuumOptimum:
    q0 = p.K0[0]
    sw2, sb2 = p.params[0], p.params[1]

    def cond(q: Mpf) -> Mpf:
        return p.eval("cond", [q])

    constant = _constant_condition(p.activation)
    if constant is not None:
        value = constant.subs({SW2: sw2, SB2: sb2})
        return _no_optimum("diagonal", (
            f"the stationarity condition is independent of q: {constant} = {value} "
            + ("> 0, so chi_out(T) grows for all T (G_d is linear in q): no interior "
               "maximum for any sw2 > 0, sb2 >= 0" if value > 0 else
               "<= 0: chi_out is maximal at T = 0")))
    q_max = 10**4 * max(mp.one, q0)
    grid = [q0 * mp.mpf(2) ** (mpmath.mpf(i) / 2)
            for i in range(int(2 * math.log2(float(q_max / q0))) + 2)]
    bracket = _first_drop(cond, grid)
    if bracket is None:
        at_start = cond(q0)
        reason = (f"no sign change + -> - of the stationarity condition for q in [q0, {q_max}]; "
                  f"at q0 it is {mpmath.nstr(at_start, 6)}")
        if at_start <= 0:
            threshold = _threshold(p, q0)
            reason += (": chi_out decreases from T = 0 (optimum at rho -> 0); an interior "
                       f"optimum needs sb2 < sb2_max(q0) = {mpmath.nstr(threshold, 8)} "
                       f"(for sw2 = {mpmath.nstr(sw2, 8)})"
                       + (", impossible at this q0 since sb2 >= 0" if threshold <= 0 else ""))
        else:
            reason += (f", at q_max {mpmath.nstr(cond(grid[-1]), 6)} (chi_out still growing: "
                       "no interior maximum)")
        return _no_optimum("diagonal", reason)
    q_star = mpmath.findroot(cond, bracket, solver="anderson", verify=False)
    residual = cond(q_star)
    t_star = mpmath.quad(lambda q: 1 / p.eval("F", [q]), [q0, q_star])
    ln_chi = _diag_ln_chi(p, q_star)
    tol = mpmath.mpf(10) ** (-(mp.dps - 8))
    converged = bool(abs(residual) < tol and bracket[0] <= q_star <= bracket[1])
    reason = "interior maximum" if converged else _unconverged(residual, tol)
    if _diag_ln_chi(p, q0) > ln_chi:
        reason += "; local: chi_out at T = 0 is larger"
    return ContinuumOptimum("diagonal", q_star, t_star, mp.sqrt(t_star), converged, reason,
                            mp.exp(ln_chi), residual)


def _unconverged(residual: Mpf, tol: Mpf) -> str:
    return (f"root not converged: |condition| = {mpmath.nstr(abs(residual), 3)} > "
            f"{mpmath.nstr(tol, 3)} (noisy moments? quadrature accuracy limits the digits)")


def _threshold(p: _Problem, q0: Mpf) -> Mpf:
    """sb2 below which the diagonal condition is positive at q0."""
    expr = _compile(continuum_equations().sb2_threshold_diag, (Q,))
    return expr(p.moments, [q0], p.params)


def _diag_ln_chi(p: _Problem, q: Mpf) -> Mpf:
    """ln chi_out at the time the diagonal reaches q: ln R(q) + int_q0^q rate/F dq."""
    q0 = p.K0[0]
    integral = mpmath.quad(lambda s: p.eval("rate", [s]) / p.eval("F", [s]), [q0, q])
    return mp.log(p.eval("R", [q])) + integral


def _offdiagonal(p: _Problem, t_max: Mpf) -> ContinuumOptimum:
    flow = _Flow(p.pair_flow, mpmath.mpf(10) ** (-(mp.dps - 3)))

    def cond(y: Vector) -> Mpf:
        return p.eval("cond_ab", y[:3])

    t, y = mp.zero, [*p.K0, mp.zero]
    previous = at_start = cond(y)
    while t < t_max:
        flow.h_max = max(mpmath.mpf("0.25"), t / 4)  # scan resolution: finer near t = 0
        size, new = flow.step(y, t_max - t)
        current = cond(new)
        if previous > 0 >= current:
            return _offdiagonal_root(p, flow, t, y, size)
        t, y, previous = t + size, new, current
    reason = (f"no sign change + -> - of the stationarity condition for t in [0, {t_max}]; "
              f"at t = 0 it is {mpmath.nstr(at_start, 6)}"
              + (" (chi_out decreases from T = 0: optimum at rho -> 0)" if at_start <= 0 else
                 f", at t_max {mpmath.nstr(previous, 6)} (chi_out still growing)"))
    return _no_optimum("offdiagonal", reason)


def _offdiagonal_root(p: _Problem, flow: _Flow, t0: Mpf, y0: Vector, size: Mpf
                      ) -> ContinuumOptimum:
    def state(t: Mpf) -> Vector:
        return flow.advance(list(y0), t - t0) if t > t0 else list(y0)

    def cond(t: Mpf) -> Mpf:
        return p.eval("cond_ab", state(t)[:3])

    t_star = mpmath.findroot(cond, (t0, t0 + size), solver="anderson", verify=False)
    y = state(t_star)
    residual = p.eval("cond_ab", y[:3])
    ln_chi_out = mp.log(p.eval("R_ab", y[:3])) + y[3]
    tol = mpmath.mpf(10) ** (-(mp.dps - 8))
    converged = bool(abs(residual) < tol and t0 <= t_star <= t0 + size)
    reason = "interior maximum" if converged else _unconverged(residual, tol)
    start = mp.log(p.eval("R_ab", list(p.K0)))
    if start > ln_chi_out:
        reason += "; local: chi_out at T = 0 is larger"
    return ContinuumOptimum("offdiagonal", (y[0], y[1], y[2]), t_star, mp.sqrt(t_star),
                            converged, reason, mp.exp(ln_chi_out), residual)


# -- evaluation helpers (for tests and reports) ------------------------------------------
def stationarity_value(activation: str | Activation, sw2: float, sb2: float,
                       K: object, *, response: str = "diagonal", dps: int = 30) -> Mpf:
    """The derived stationarity condition d ln chi_out / dT at kernel ``K``.

    ``K`` is q (diagonal) or (K_aa, K_bb, K_ab) (off-diagonal).
    """
    with mp.workdps(dps + 5):
        act = resolve(activation) if isinstance(activation, str) else activation
        moments = _moments(act, dps + 5)
        params = (_mpf(sw2), _mpf(sb2), mp.one)
        if response == "diagonal":
            return _compiled()["cond"](moments, [_mpf(K)], params)
        values = [_mpf(v) for v in K]  # type: ignore[union-attr]
        return _compiled()["cond_ab"](moments, values, params)


def continuum_ln_chi_out(activation: str | Activation, sw2: float, sb2: float, K0: object,
                         T: object, *, response: str = "diagonal", sw2_out: float = 1.0,
                         dps: int = 30) -> Mpf:
    """ln chi_out(T) of the continuum limit, directly (no stationarity condition).

    Diagonal: q(T) from the ODE, then ln R(q(T)) + int_q0^q(T) rate/F dq by quadrature.
    Off-diagonal: the ODE for (K, ln chi_ab) integrated to T.
    """
    check_real("T", T, minimum=0.0, what="a continuum time rho^2 L")
    with mp.workdps(dps + 5):
        p = _problem(activation, sw2, sb2, K0, response, sw2_out, dps + 5)
        duration = _mpf(T)
        tol = mpmath.mpf(10) ** (-(mp.dps - 3))
        if response == "diagonal":
            flow = _Flow(lambda y: [p.eval("F", y)], tol)
            q = flow.advance([p.K0[0]], duration)[0]
            return _diag_ln_chi(p, q)
        y = _Flow(p.pair_flow, tol).advance([*p.K0, mp.zero], duration)
        return mp.log(p.eval("R_ab", y[:3])) + y[3]
