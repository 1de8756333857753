"""Composite Gauss-Legendre rules for Gaussian expectations at any variance.

The generated code needs ``E[f(u)]``, ``u ~ N(mean, sd^2)``, for derivatives of
phi (and of phi^2), at variances from ~1e-4 to ~1e4 (deep ResNets). A fixed
Gauss-Hermite rule scales its nodes with ``sd``: at large variance almost all
of them land where phi has saturated and the few near u = 0, where phi and its
derivatives change, are far too coarse (tanh at q = 50: G_d' of the wrong sign).

Here the rule lives in the standard-normal variable ``t = (u - mean) / sd`` on
``|t| <= T_MAX`` (the tail beyond carries < 2e-17 of the mass) and is cut into
panels at the union of

* density breakpoints ``DENSITY_POINTS`` (0, +-1.5, ..., +-T_MAX): where the
  Gaussian factor changes, in ``t``; and
* the activation's structure points mapped into ``t``: its kinks (0 for the
  built-in families) and a ladder ``kink +- scale * LADDER`` in ``u`` that grows
  geometrically away from the kink (ratio 2, with extra rungs at 3 and 6 where
  Gaussian-like factors such as GELU's Phi still change by e^(u du)). A
  function whose structure sits at the kink on *any* scale between the
  ladder's ends (phi itself, or the smoothed phi of a conditional expectation)
  is resolved by panels whose widths are a fixed fraction of their distance
  from it. ``scale`` is the activation's own length, found at build time.

Points outside ``[-T_MAX, T_MAX]`` are clipped to the ends and give empty
panels, so the panel count is fixed and the rule vectorises over arrays of
means and variances (the empty panels at both ends shared by every row are
trimmed); each panel carries ``n`` Gauss-Legendre nodes, ``n`` chosen at build
time for the stated accuracy. At ``sd = 0`` every structure point maps to the
ends and the rule is the density rule at ``u = mean``: a point mass, so
correlations at +-1 are no special case.

Pair moments condition on the input with the larger variance,
``u_b | u_a ~ N(K_ab / K_aa * u_a, Delta / K_aa)``, ``Delta = K_aa K_bb - K_ab^2``:
the inner rule adapts to the conditional variance (tiny near |c| = 1), and the
smoothed inner function of ``u_a`` varies on a scale >= phi's own around
``u_a = 0`` (the larger variance outside makes ``|K_ab| / K_aa <= 1``), which the
same ladder resolves. The outer nodes and phi at them depend on one input only
and are computed once per input, shared by all its pairs.

This module is the build-time twin of the rule the generated modules carry
(``kernel_module.py.j2``): the planner measures the accuracy of this code
against independent adaptive QUADPACK integrals (:func:`reference_diag`,
:func:`reference_pair`), and the tests check the generated code against
mpmath and QUADPACK references.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import scipy.integrate

#: Half-width of the rule in the standard-normal variable: 2 P(Z > 8.5) < 2e-17.
T_MAX = 8.5
#: Density breakpoints (in t, mirrored).
DENSITY_POINTS = (0.0, 1.5, 3.0, 4.5, 6.0, 7.25, T_MAX)
#: Structure ladder in units of the activation's length scale (mirrored about each kink).
LADDER = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0, 32.0, 64.0, 128.0)

Fn = Callable[[np.ndarray], np.ndarray]


def density_points() -> np.ndarray:
    pts = np.array(DENSITY_POINTS)
    return np.concatenate([-pts[:0:-1], pts])


def structure_points(scale: float, kinks: Sequence[float] = (0.0,)) -> np.ndarray:
    """The kinks and the ladder kink +- scale * LADDER around each, sorted."""
    steps = scale * np.array(LADDER)
    pts = [np.array(kinks, dtype=float)]
    for kink in kinks:
        pts += [kink + steps, kink - steps]
    return np.unique(np.concatenate(pts))


def nonfinite_means_decayed(fns: Sequence[Fn]) -> bool:
    """Whether the functions overflow to inf/nan somewhere on |u| <= 1e5 (then True) only
    where they have decayed to 0 (e.g. SiLU's derivatives: x e^-x / (1 + e^-x)^2 at
    x << 0 is inf/inf in floating point); such values are read as 0. ValueError if
    a function is non-finite next to a value that has not decayed (a real divergence).
    """
    side = np.logspace(-3, 5, 4001)
    u = np.concatenate([-side[::-1], [0.0], side])
    found = False
    with np.errstate(all="ignore"):
        for fn in fns:
            values = np.broadcast_to(fn(u), u.shape).astype(float)
            bad = ~np.isfinite(values)
            if not bad.any():
                continue
            found = True
            # the finite neighbour on the side of u = 0 of every non-finite value
            edge = np.flatnonzero(np.diff(bad.astype(int)))
            neighbours = [i if bad[i + 1] else i + 1 for i in edge]
            top = np.max(np.abs(values[~bad]), initial=0.0)
            if bad[len(u) // 2] or any(abs(values[i]) > 1e-30 * top for i in neighbours):
                raise ValueError("not finite where it has not decayed")
    return found


def finite_or_zero(fn: Fn) -> Fn:
    def call(u):
        with np.errstate(all="ignore"):
            values = fn(u)
        return np.where(np.isfinite(values), values, 0.0)
    return call


def gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes on [-1, 1] and weights with the N(0,1) normalisation folded in."""
    x, w = np.polynomial.legendre.leggauss(n)
    return x, w / math.sqrt(2.0 * math.pi)


def gaussian_rule(mean, sd, structure: np.ndarray, gl: tuple[np.ndarray, np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Nodes u and weights w (density included) with E[f(u)] ~ sum(w * f(u), axis=-1).

    ``mean`` and ``sd`` broadcast; the node axis is appended last.
    """
    mean, sd = np.broadcast_arrays(np.asarray(mean, dtype=float), np.asarray(sd, dtype=float))
    with np.errstate(divide="ignore", invalid="ignore"):
        mapped = (structure - mean[..., None]) / sd[..., None]
    mapped = np.where(sd[..., None] > 0, mapped, T_MAX)
    dens = density_points()
    dens = np.broadcast_to(dens, mean.shape + dens.shape)
    edges = np.sort(np.clip(np.concatenate([mapped, dens], axis=-1), -T_MAX, T_MAX), axis=-1)
    if edges.size:  # drop the empty end panels every row shares
        lo = int(np.count_nonzero(edges == -T_MAX, axis=-1).min()) - 1
        hi = int(np.count_nonzero(edges == T_MAX, axis=-1).min()) - 1
        edges = edges[..., lo:edges.shape[-1] - hi]
    half = 0.5 * (edges[..., 1:] - edges[..., :-1])
    mid = 0.5 * (edges[..., 1:] + edges[..., :-1])
    x, w = gl
    t = (mid[..., None] + half[..., None] * x).reshape(mean.shape + (-1,))
    wt = (half[..., None] * w).reshape(mean.shape + (-1,)) * np.exp(-0.5 * t * t)
    return mean[..., None] + sd[..., None] * t, wt


def diag_moment(q, f: Fn, structure: np.ndarray, gl: tuple[np.ndarray, np.ndarray]
                ) -> np.ndarray:
    """E[f(u)], u ~ N(0, q), elementwise in q."""
    q = np.asarray(q, dtype=float)
    u, w = gaussian_rule(0.0, np.sqrt(q), structure, gl)
    return np.sum(w * np.broadcast_to(f(u), u.shape), axis=-1)


def pair_moment(qa, qb, k, fa: Fn, fb: Fn, structure: np.ndarray,
                gl: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """E[fa(u_a) fb(u_b)] elementwise, conditioning on the input of larger variance."""
    qa, qb, k = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (qa, qb, k)))
    delta = np.maximum(qa * qb - k * k, 0.0)
    swap = qb > qa
    qo = np.where(swap, qb, qa)
    uo, wo = gaussian_rule(0.0, np.sqrt(qo), structure, gl)
    scale = np.where(qo > 0, k / np.where(qo > 0, qo, 1.0), 0.0)
    sd = np.sqrt(delta / np.where(qo > 0, qo, 1.0))
    ui, wi = gaussian_rule(scale[..., None] * uo, sd[..., None], structure, gl)
    out = np.empty(qa.shape)
    for mask, f_out, f_in in ((swap, fb, fa), (~swap, fa, fb)):
        if np.any(mask):
            inner = np.sum(wi[mask] * np.broadcast_to(f_in(ui[mask]), ui[mask].shape), axis=-1)
            outer = np.broadcast_to(f_out(uo[mask]), uo[mask].shape)
            out[mask] = np.sum(wo[mask] * outer * inner, axis=-1)
    return out


# -- independent references (adaptive QUADPACK) ----------------------------------------------
#: Relative tolerances asked of QUADPACK (1-D) and of the nested 2-D integrals.
REFERENCE_EPSREL = 1e-13
REFERENCE_EPSREL_NESTED = 1e-12
#: u-points where a reference integral is cut (structure of phi in units of its scale).
REFERENCE_BREAKS = (0.0, 0.25, 1.0, 3.0, 10.0, 30.0)
REFERENCE_WIDTH = 12.0


def _quad(func: Callable[[float], float], lo: float, hi: float,
          breaks: Sequence[float]) -> float:
    cuts = [lo, *sorted(b for b in set(breaks) if lo < b < hi), hi]
    total = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            total += scipy.integrate.quad(func, a, b, epsabs=0, epsrel=REFERENCE_EPSREL,
                                          limit=200)[0]
    return total


def _t_breaks(mean: float, sd: float, scale: float, kinks: Sequence[float]) -> list[float]:
    """Structure points of phi mapped into the standard-normal variable."""
    if sd <= 0:
        return []
    pts = [k + s * b * scale for k in kinks for b in REFERENCE_BREAKS for s in (1, -1)]
    return [(p - mean) / sd for p in pts]


def reference_diag(q: float, f: Fn, scale: float = 1.0, kinks: Sequence[float] = (0.0,)
                   ) -> float:
    """E[f(u)], u ~ N(0, q), by adaptive QUADPACK in t = u / sqrt(q), cut at phi's structure."""
    sd = math.sqrt(q)
    norm = 1 / math.sqrt(2 * math.pi)

    def integrand(t: float) -> float:
        return norm * math.exp(-0.5 * t * t) * float(f(np.float64(sd * t)))

    return _quad(integrand, -REFERENCE_WIDTH, REFERENCE_WIDTH, _t_breaks(0.0, sd, scale, kinks))


def reference_pair(qa: float, qb: float, k: float, fa: Fn, fb: Fn, scale: float = 1.0,
                   kinks: Sequence[float] = (0.0,)) -> np.ndarray:
    """E[fa(u_a) fb(u_b)] by nested adaptive quadrature: u_a outside, u_b | u_a inside.

    ``fa`` and ``fb`` return 1-D arrays of values (several functions at once, e.g.
    phi and its derivatives); the result is the matrix E[fa_i(u_a) fb_j(u_b)].
    Both levels are scipy's adaptive Gauss-Kronrod ``quad_vec`` (vector-valued;
    its error control is on the largest component, so callers scale components
    to comparable size), cut at phi's structure points.
    """
    sa = math.sqrt(qa)
    sd = math.sqrt(max(qa * qb - k * k, 0.0) / qa)
    norm = 1 / math.sqrt(2 * math.pi)

    def inner(ua: float) -> np.ndarray:
        mean = k / qa * ua
        if sd == 0:
            return np.asarray(fb(mean), dtype=float)

        def integrand(t: float) -> np.ndarray:
            return norm * math.exp(-0.5 * t * t) * np.asarray(fb(mean + sd * t), dtype=float)

        return _quad_vec(integrand, _t_breaks(mean, sd, scale, kinks))

    def outer(t: float) -> np.ndarray:
        ua = sa * t
        return norm * math.exp(-0.5 * t * t) * np.outer(fa(ua), inner(ua)).reshape(-1)

    # the inner function of u_a changes where its mean crosses phi's structure
    breaks = _t_breaks(0.0, sa, scale, kinks)
    if k:
        breaks += _t_breaks(0.0, abs(k) / sa, scale, kinks)
    value = _quad_vec(outer, breaks)
    return value.reshape(len(fa(0.0)), -1)


def _quad_vec(func: Callable[[float], np.ndarray], breaks: Sequence[float]) -> np.ndarray:
    width = REFERENCE_WIDTH
    points = sorted(b for b in set(breaks) if -width < b < width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scipy.integrate.quad_vec(func, -width, width, epsabs=0,
                                        epsrel=REFERENCE_EPSREL_NESTED,
                                        points=points or None,
                                        limit=200)[0]
