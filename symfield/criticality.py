"""Order to chaos: the fixed points of the FFNet layer map and their stability.

Nothing here is typed in. The maps are read off the spine's derived layer map
(:func:`symfield.saddle.derive_layer_map`, specialised to the FFNet process
``gamma = 0, beta = 1``):

* the variance map ``q -> V(q)``, the diagonal of the layer map;
* the correlation map ``c -> M(c) = K'_ab / q*`` on the line
  ``K_aa = K_bb = q*, K_ab = c q*`` (at the fixed point ``K'_aa = V(q*) = q*``);
* their slopes ``chi_q = dV/dq`` and ``chi_c = dM/dc`` (chain rule along the
  line, :func:`symfield.response.tangent`), and ``chi_1 = chi_c`` at ``c = 1``.

The expressions come out in the moment symbols ``G, G_k, G_d, G_d_q`` of
:mod:`symfield.ir`, each evaluated at the point of the map: ``G_d, G_d_q`` at
``q``; ``G, G_k`` at ``(q*, q*, c q*)``. Numbers come from the generated numpy
moments (vectorised bracketing and bisection, :func:`scan`) or, with ``dps``,
from the mpmath moments (:func:`mpmath.findroot` polishing the float root).

Conventions (the choices the numbers rest on):

* ``q*`` is the attracting fixed point of ``V`` on ``q >= 0``: the largest ``q``
  where ``V(q) - q`` changes sign from + to -. ``q* = 0`` when ``V(q) < q`` for all
  ``q > 0`` (``sb2 = 0`` and ``sw2 phi'(0)^2 <= 1`` for an odd ``phi``); there the
  correlation is undefined (``c_star`` null with a reason) and ``chi_q``, ``chi_1``
  are their limits ``q -> 0+`` (evaluated at ``q = Q_ZERO``).
* No fixed point (``V(q) > q`` up to ``Q_MAX``): the variance grows without bound;
  ``q_star`` and everything at ``q*`` is null, with a ``reason``. ``chi_q`` is then
  the slope of ``V`` at ``Q_MAX``: 1 on ReLU's semi-critical line (``sw2 = 2,
  sb2 > 0``, linear growth; ``phase`` ``semi-critical``), above 1 otherwise
  (``phase`` null).
* ``V(q) = q`` for every ``q`` (ReLU at ``sw2 = 2, sb2 = 0``; the identity at
  ``sw2 = 1, sb2 = 0``): every ``q`` is a fixed point; ``q_star`` is null with a
  reason and the slopes, which do not depend on ``q`` there, are taken at ``q = 1``.
* ``phase``: ``critical`` if ``|chi_1 - 1| <= CRITICAL_TOL``, else ``ordered``
  (``chi_1 < 1``, ``c* = 1`` attracts) or ``chaotic`` (``chi_1 > 1``; ``c*`` is the
  largest attracting root of ``M(c) = c`` below 1).
* ``xi = -1/ln chi`` diverges at ``chi = 1``: reported as null with
  ``xi_*_reason`` (JSON has no infinity; a huge finite number would pass for a
  measurement).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import sympy as sp

from .action import BETA, FFNET, GAMMA, SB2, SW2
from .gaussian import KAA, KAB, KBB, Q
from .ir import MOMENTS, moment_symbols
from .response import tangent
from .saddle import derive_layer_map

#: The fixed-point variance q* and the correlation c, as symbols of the maps.
QSTAR = sp.Symbol("q_*", positive=True)
CORR = sp.Symbol("c", real=True)

#: |chi_1 - 1| at or below this is the critical line (float64 moments, ~1e-12 accurate).
CRITICAL_TOL = 1e-9
#: The bracketing grid in q, and the variance standing in for q -> 0+.
Q_ZERO, Q_MAX = 1e-12, 1e6
Q_GRID = np.concatenate([[0.0], np.geomspace(1e-10, Q_MAX, 321)])
#: The bracketing grid in c: uniform on [-1, 1) and geometric towards 1.
C_GRID = np.unique(np.concatenate([np.linspace(-1.0, 1.0, 17)[:-1],
                                   1.0 - np.geomspace(0.1, 1e-11, 16)]))
NEWTON_ITERATIONS = 60
#: Newton stops when every step is below this (relative; quadrature moments jitter ~1e-14).
STEP_TOL = 1e-13


@dataclass(frozen=True)
class CriticalityMaps:
    """The derived maps and slopes, in moment symbols (see the module docstring)."""

    variance: sp.Expr     # V(q): sb2 + sw2 G_d            (G_d at q)
    chi_q: sp.Expr        # dV/dq                          (G_d_q at q)
    correlation: sp.Expr  # M(c) = K'_ab / q*              (G at (q*, q*, c q*))
    chi_c: sp.Expr        # dM/dc                          (G_k at (q*, q*, c q*))
    chi_1: sp.Expr        # dM/dc at c = 1                 (G_k at (q*, q*, q*))


@functools.lru_cache(maxsize=1)
def derive_maps() -> CriticalityMaps:
    """Specialise the spine's layer map to the FFNet and differentiate it."""
    layer = derive_layer_map()
    ffnet = {GAMMA: FFNET.gamma, BETA: FFNET.beta}
    variance = layer.diag.subs(ffnet)
    pair = layer.pair.subs(ffnet)
    line = {KAA: QSTAR, KBB: QSTAR, KAB: CORR * QSTAR}  # K on the correlation line
    correlation = pair / QSTAR
    # d/dc along the line: dK_ab/dc from the line itself (K_aa, K_bb fixed at q*)
    along = {v: sp.diff(line[v], CORR) for v in (KAA, KBB, KAB)}
    chi_c = tangent(correlation, CORR, {v: d for v, d in along.items() if d != 0})
    chi_q = sp.diff(variance, Q)
    # c = 1 moves the evaluation point to (q*, q*, q*); the expression keeps its form
    chi_1 = chi_c.subs(CORR, 1)
    maps = [moment_symbols(e) for e in (variance, chi_q, correlation, chi_c, chi_1)]
    return CriticalityMaps(*(sp.simplify(m) for m in maps))


#: Argument names of every compiled map (moments first, then the parameters).
_ARGS = ("G", "G_k", "G_d", "G_d_q")
_SYMS = {**{n: MOMENTS[n] for n in _ARGS}, "sw2": SW2, "sb2": SB2, "q_star": QSTAR, "q": Q,
         "c": CORR}


def _compile(expr: sp.Expr, modules: str):
    unknown = expr.free_symbols - set(_SYMS.values())
    if unknown:
        raise ValueError(f"criticality map has free symbols {sorted(map(str, unknown))}")
    names = tuple(_SYMS)
    fn = sp.lambdify([_SYMS[n] for n in names], expr, modules=modules)
    return lambda **kw: fn(*(kw.get(n, 0) for n in names))


@functools.lru_cache(maxsize=2)
def compiled(modules: str = "numpy") -> dict:
    maps = derive_maps()
    return {name: _compile(getattr(maps, name), modules)
            for name in ("variance", "chi_q", "correlation", "chi_c", "chi_1")}


# -- float64: vectorised over (sw2, sb2) ------------------------------------------------
class _Moments:
    """The generated module's moments with the activation's parameters bound."""

    def __init__(self, activation):
        from .activations import resolve
        from .kernel import load_module

        self.act = resolve(activation) if isinstance(activation, str) else activation
        self.module = load_module(self.act)
        self.params = self.act.param_values

    def diag(self, q):
        with np.errstate(all="ignore"):
            return self.module.diag_expectations(q, **self.params)

    def pair(self, qa, qb, k):
        """Flat in, reshaped out: the generated function takes any shape but is tested 1-D."""
        qa, qb, k = np.broadcast_arrays(*(np.asarray(a, float) for a in (qa, qb, k)))
        with np.errstate(all="ignore"):
            out = self.module.pair_expectations(qa.ravel(), qb.ravel(), k.ravel(), **self.params)
        return {name: v.reshape(k.shape) for name, v in out.items()}


def _safe_newton(f, lo, hi, atol=0.0):
    """Vectorised root of f on [lo, hi], f(lo) > 0 >= f(hi): Newton kept inside the bracket.

    ``f(x)`` returns (value, slope). The bracket is updated with the sign of every value;
    a Newton step that leaves it is replaced by bisection. Stops when every step is below
    ``STEP_TOL * (|x| + atol)`` (``atol`` for roots at or near 0, e.g. c* = 0).
    """
    x = 0.5 * (lo + hi)
    for _ in range(NEWTON_ITERATIONS):
        value, slope = f(x)
        done = value == 0
        up = value > 0
        lo, hi = np.where(up, x, lo), np.where(up | done, hi, x)
        with np.errstate(all="ignore"):
            step = x - value / slope
        slack = STEP_TOL * (np.abs(x) + atol)  # a root on the bracket's end, up to rounding
        inside = (step >= lo - slack) & (step <= hi + slack) & np.isfinite(step)
        x_new = np.where(done, x, np.where(inside, np.clip(step, lo, hi), 0.5 * (lo + hi)))
        if np.all(done | (np.abs(x_new - x) <= STEP_TOL * (np.abs(x) + atol))):
            return x_new
        x = x_new
    return x


def _last_down_crossing(values: np.ndarray) -> np.ndarray:
    """Index i of the last + -> (<= 0) sign change along the last axis, or -1."""
    down = (values[..., :-1] > 0) & (values[..., 1:] <= 0)
    n = down.shape[-1]
    last = n - 1 - np.argmax(down[..., ::-1], axis=-1)
    return np.where(down.any(axis=-1), last, -1)


def _q_top(mom) -> float:
    """The largest variance the bracketing grid reaches: Q_MAX, or the top of the
    generated quadrature's trusted range where that is lower."""
    return min(Q_MAX, getattr(mom.module, "QUADRATURE_Q_MAX", None) or Q_MAX)


def scan(activation, sw2, sb2) -> dict[str, np.ndarray]:
    """Fixed points and slopes for arrays of (sw2, sb2), in float64.

    Returns arrays (broadcast shape) ``q_star, c_star, chi_q, chi_c, chi_1, xi_q, xi_c``
    (NaN where undefined) and ``status``: 0 a fixed point q* > 0, 1 q* = 0,
    2 every q is a fixed point, 3 no fixed point (growth without bound).
    """
    mom = _Moments(activation)
    fn = compiled("numpy")
    sw2, sb2 = np.broadcast_arrays(np.asarray(sw2, float), np.asarray(sb2, float))
    shape = sw2.shape
    w, b = sw2.reshape(-1, 1), sb2.reshape(-1, 1)

    # variance map on the grid: the moments do not depend on (sw2, sb2). The grid stops
    # at the top of the moments' trusted range (quadrature families): beyond it they are
    # NaN, and a NaN must never read as "no crossing"
    q_top = _q_top(mom)
    grid = Q_GRID[Q_GRID <= q_top]
    Gd = mom.diag(grid)["G_d"]
    F = fn["variance"](G_d=Gd, sw2=w, sb2=b) - grid
    if not np.all(np.isfinite(F)):
        from .kernel import NumericalError

        raise NumericalError(f"the variance map of {activation} is not finite on "
                             f"0 <= q <= {q_top:g} (sw2, sb2 non-finite or out of range?)")
    scale = grid + b
    identity = np.all(np.abs(F) <= 1e-12 * scale, axis=-1)
    i = _last_down_crossing(F)
    unbounded = (i < 0) & (F[:, -1] > 0) & ~identity
    zero = (i < 0) & ~unbounded & ~identity
    found = i >= 0
    w, b = w[:, 0], b[:, 0]
    lo = grid[np.maximum(i, 0)]
    hi = grid[np.maximum(i, 0) + 1]

    q_star = np.full(w.shape, np.nan)
    if found.any():
        wf, bf = w[found], b[found]

        def excess(q):
            d = mom.diag(q)
            return (fn["variance"](G_d=d["G_d"], sw2=wf, sb2=bf) - q,
                    fn["chi_q"](G_d_q=d["G_d_q"], sw2=wf, sb2=bf) - 1)

        q_star[found] = _safe_newton(excess, lo[found], hi[found])
    # where the slopes are taken: q*, its limit 0+, q = 1 (identity), Q_MAX (unbounded)
    q_eval = np.select([found, zero, identity], [q_star, Q_ZERO, 1.0], q_top)
    chi_q = fn["chi_q"](G_d_q=mom.diag(q_eval)["G_d_q"], sw2=w, sb2=b)
    at1 = mom.pair(q_eval, q_eval, q_eval)
    chi_1 = fn["chi_1"](G_k=at1["G_k"], sw2=w, sb2=b, q_star=q_eval)
    chi_1 = np.where(unbounded, np.nan, chi_1)

    # correlation map at q*: c* = 1 unless chaotic, else the last down-crossing below 1
    c_star = np.where(found | identity, 1.0, np.nan)
    chaotic = (found | identity) & (chi_1 > 1 + CRITICAL_TOL)
    if chaotic.any():
        qc, wc, bc = q_eval[chaotic, None], w[chaotic, None], b[chaotic, None]
        G = mom.pair(qc, qc, C_GRID * qc)["G"]
        H = fn["correlation"](G=G, sw2=wc, sb2=bc, q_star=qc) - C_GRID
        j = _last_down_crossing(H)
        j = np.maximum(j, 0)  # H(-1) >= 0 and H < 0 just below 1: a crossing exists
        qc, wc, bc = qc[:, 0], wc[:, 0], bc[:, 0]

        def corr_excess(c):
            g = mom.pair(qc, qc, c * qc)
            return (fn["correlation"](G=g["G"], sw2=wc, sb2=bc, q_star=qc) - c,
                    fn["chi_c"](G_k=g["G_k"], sw2=wc, sb2=bc, q_star=qc) - 1)

        c_star[chaotic] = _safe_newton(corr_excess, C_GRID[j], C_GRID[j + 1], atol=1.0)
    c_eval = np.where(np.isnan(c_star), 1.0, c_star)
    Gk = mom.pair(q_eval, q_eval, c_eval * q_eval)["G_k"]
    chi_c = np.where(np.isnan(c_star), np.nan,
                     fn["chi_c"](G_k=Gk, sw2=w, sb2=b, q_star=q_eval))
    with np.errstate(all="ignore"):
        xi_q = np.where(np.abs(chi_q - 1) > CRITICAL_TOL, -1 / np.log(chi_q), np.nan)
        xi_c = np.where(np.abs(chi_c - 1) > CRITICAL_TOL, -1 / np.log(chi_c), np.nan)
    xi_q = np.where(found | zero, xi_q, np.nan)
    status = np.select([found, zero, identity], [0, 1, 2], 3)
    out = {"q_star": np.where(zero, 0.0, q_star), "c_star": c_star, "chi_q": chi_q,
           "chi_c": chi_c, "chi_1": chi_1, "xi_q": xi_q, "xi_c": xi_c, "status": status}
    return {k: v.reshape(shape) for k, v in out.items()}


# -- one point: the payload of `symfield criticality` -----------------------------------
REASONS = {
    "zero": "q* = 0: V(q) < q for every q > 0, the signal dies out; no correlation at q* = 0",
    "identity": "every q is a fixed point (V(q) = q): the variance map is the identity",
    "linear": "no fixed point: V(q) = q + const > q, q grows linearly with depth "
              "(semi-critical line)",
    "exponential": "no fixed point: V(q) > q up to q = {qmax:g}, q grows without bound",
    "diverges": "chi_{name} = 1: the depth scale -1/ln chi_{name} diverges",
}


def _phase(chi_1: float) -> str:
    if abs(chi_1 - 1) <= CRITICAL_TOL:
        return "critical"
    return "ordered" if chi_1 < 1 else "chaotic"


def analyse(activation: str, sw2: float, sb2: float, dps: int | None = None) -> dict:
    """The criticality payload at one (sw2, sb2): numbers, or decimal strings with dps."""
    r = {k: v.item() for k, v in scan(activation, sw2, sb2).items()}
    r = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
    status = r.pop("status")
    if status == 3 and _q_top(_Moments(activation)) < Q_MAX:
        from .kernel import NumericalError

        raise NumericalError(
            f"no fixed point of the variance map of {activation} up to q = "
            f"{_q_top(_Moments(activation)):g}, the top of its quadrature's trusted range: "
            "whether q grows without bound or settles beyond it is not decided here")
    phase = None if r["chi_1"] is None else _phase(r["chi_1"])
    out: dict = {"activation": activation, "sw2": sw2, "sb2": sb2}
    q_range = getattr(_Moments(activation).module, "QUADRATURE_Q_MAX", None)
    q_top = Q_MAX if dps is not None else _q_top(_Moments(activation))
    q_used = {0: r["q_star"], 2: 1.0, 3: q_top}.get(status, 0.0)
    if dps is not None:
        r.update(_polish(activation, sw2, sb2, r, status, dps))
    elif q_range is not None and q_used > q_range:
        from .kernel import NumericalError

        raise NumericalError(
            f"q = {q_used:.6g} is beyond the generated quadrature's trusted range "
            f"(q <= {q_range:g}) for {activation}: no float64 value is given there; "
            "--dps D computes it with the mpmath moments")
    if status == 3:
        linear = abs(float(r["chi_q"]) - 1) <= CRITICAL_TOL
        reason = REASONS["linear" if linear else "exponential"].format(qmax=q_top)
        out.update(q_star=None, reason=reason, c_star=None, chi_1=None, chi_c=None,
                   chi_q=r["chi_q"], xi_q=None, xi_c=None,
                   phase="semi-critical" if linear else None)
        if not linear:
            out["phase_reason"] = reason
        if dps is not None:
            out["dps"] = dps
        return out
    for key in ("q_star", "c_star", "chi_1", "chi_q", "chi_c", "xi_q", "xi_c"):
        out[key] = r[key]
    if status == 1:
        out["c_star_reason"] = REASONS["zero"]
        out["c_star"] = out["chi_c"] = out["xi_c"] = None
    if status == 2:
        out["q_star"], out["xi_q"] = None, None
        out["reason"] = REASONS["identity"]
    for name in ("q", "c"):
        key = f"xi_{name}"
        if out[key] is None and out.get(f"chi_{name}") is not None:
            out[f"{key}_reason"] = (REASONS["diverges"].format(name=name) if status != 2
                                    else REASONS["identity"])
    out["phase"] = phase
    if dps is not None:
        out["dps"] = dps
    return out


def _polish(activation: str, sw2: float, sb2: float, r: dict, status: int, dps: int) -> dict:
    """The same numbers on the mpmath moments at dps digits, as decimal strings.

    Roots: :func:`mpmath.findroot` (secant) from the float roots. Slopes where there is
    no root are taken at the same points as :func:`scan` (q = 1 on the identity,
    ``Q_MAX`` without a fixed point), and at ``q = 10^-(dps + 10)`` for the limit q* -> 0+.
    """
    import mpmath
    from mpmath import mp

    from .precision import mp_expectations, to_mpf, working_precision

    m = mp_expectations(activation, dps + 5)
    fn = compiled("mpmath")
    with working_precision(dps + 5):
        w, b = to_mpf(sw2), to_mpf(sb2)

        def excess(q):
            return fn["variance"](G_d=m.G_d(q), sw2=w, sb2=b) - q

        if status == 0:
            q0 = mp.mpf(r["q_star"])
            q = mpmath.findroot(excess, (q0 * (1 - mp.mpf(1e-9)), q0 * (1 + mp.mpf(1e-9))),
                                solver="secant")
        else:
            q = {1: mp.mpf(10) ** -(dps + 10), 2: mp.mpf(1), 3: to_mpf(Q_MAX)}[status]
        values = {"chi_q": fn["chi_q"](G_d_q=m.G_d_q(q), sw2=w, sb2=b)}
        if status != 3:
            values["chi_1"] = fn["chi_1"](G_k=m.G_k(q, q, q), sw2=w, sb2=b, q_star=q)
        if status in (0, 2):
            if r["c_star"] < 1:
                def corr_excess(c):
                    return fn["correlation"](G=m.G(q, q, c * q), sw2=w, sb2=b, q_star=q) - c

                c0 = mp.mpf(r["c_star"])
                c = mpmath.findroot(corr_excess, (c0 - mp.mpf(1e-9), c0 + mp.mpf(1e-9)),
                                    solver="secant")
            else:
                c = mp.mpf(1)
            values["c_star"] = c
            values["chi_c"] = fn["chi_c"](G_k=m.G_k(q, q, c * q), sw2=w, sb2=b, q_star=q)
        values["q_star"] = q if status == 0 else (mp.mpf(0) if status == 1 else None)

        def xi(chi):
            return None if abs(chi - 1) <= CRITICAL_TOL else -1 / mp.log(chi)

        if status in (0, 1):
            values["xi_q"] = xi(values["chi_q"])
        if "chi_c" in values:
            values["xi_c"] = xi(values["chi_c"])
        return {k: None if v is None else mp.nstr(v, dps, strip_zeros=False)
                for k, v in values.items()}


def format_text(result: dict) -> str:
    """One line per key, in the JSON's order (reasons after their value)."""
    width = max(len(k) for k in result)
    return "\n".join(f"{k:<{width}}  {'null' if v is None else v}" for k, v in result.items())
