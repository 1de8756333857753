"""Closed forms against direct quadrature of the Gaussian integral.

For every activation with closed forms, the derived ``G``, ``dG/dK_ab``,
``dG/dK_aa``, ``dG/dK_bb``, ``G_d`` and ``dG_d/dq`` are compared with 2-D (1-D
on the diagonal) mpmath quadrature of the integral with the bivariate normal
density written out,

    p(u_a, u_b) = exp(-(K_bb u_a^2 - 2 K_ab u_a u_b + K_aa u_b^2) / (2 det)) / (2 pi sqrt(det)),

never through the closed form. Derivatives are checked three ways: by Price's
theorem (``G_k = E[phi'(u_a) phi'(u_b)]``, ``G_qa = E[phi''(u_a) phi(u_b)] / 2``,
for ReLU-like phi by parts), by differentiating the density under the
integral (``dp/dK = p * score``: ``G_k:score``, ``G_d_q``), and by ``mp.diff``
of the quadrature value (``G_k:diff``, ``G_d_q:diff``).

The nodes are those of :func:`symfield.precision.gaussian_panels` in the
coordinates ``u_a = sqrt(K_aa) z``, ``u_b = (K_ab/K_aa) u_a + sqrt(det/K_aa) t``
(so the conditional density is resolved at any correlation), with plain
``dz dt`` weights; the density is evaluated explicitly at every node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import mpmath
from mpmath import mp

from ..activations import resolve
from ..precision import (
    CENTRE_PANEL,
    MpExpectations,
    Mpf,
    PhiFunctions,
    digits_at,
    gaussian_panels,
    mp_expectations,
    phi_functions,
    steep_delta,
    to_mpf,
    working_precision,
)

#: (K_aa, K_bb, correlation) test points; correlations near 1 and negative included.
POINTS: tuple[tuple[str, str, str], ...] = (
    ("0.7", "1.3", "0.3"),
    ("0.7", "1.3", "0.999"),
    ("0.7", "1.3", "-0.7"),
    ("2.5", "0.4", "0.6"),
)
PAIR_QUANTITIES = ("G", "G_k", "G_k:score", "G_qa", "G_qb")
_SUMS = ("G", "G_k", "G_k:score", "a2 b0", "a0 b2")
DIAG_QUANTITIES = ("G_d", "G_d_q")
DIFF_QUANTITIES = ("G_k:diff", "G_d_q:diff")
QUANTITIES = PAIR_QUANTITIES + DIAG_QUANTITIES + DIFF_QUANTITIES
#: The closed-form entry each quantity is compared with.
REFERENCE = {"G": "G", "G_k": "G_k", "G_k:score": "G_k", "G_qa": "G_qa", "G_qb": "G_qb",
             "G_d": "G_d", "G_d_q": "G_d_q", "G_k:diff": "G_k", "G_d_q:diff": "G_d_q"}


class CheckRow(NamedTuple):
    """One line of the check: worst relative error over ``points`` points."""

    activation: str
    quantity: str
    points: int
    worst_rel_err: float


def pair_by_density(phi: PhiFunctions, kaa: object, kbb: object, kab: object
                    ) -> dict[str, Mpf]:
    """G, G_k (Price and density derivative), G_qa, G_qb at one point (|c| < 1).

    G_qa = E[phi''(u_a) phi(u_b)] / 2 (Price); for a distributional phi''
    (ReLU) by parts, (E[u_a phi'(u_a) phi(u_b)] - K_ab G_k) / (2 K_aa).
    """
    kaa, kbb, kab = to_mpf(kaa), to_mpf(kbb), to_mpf(kab)
    det = kaa * kbb - kab * kab
    if det <= 0:
        raise ValueError("the explicit density needs |correlation| < 1")
    norm = 1 / (2 * mp.pi * mp.sqrt(det))
    ra, slope, sigma = mp.sqrt(kaa), kab / kaa, mp.sqrt(det / kaa)
    c = kab / mp.sqrt(kaa * kbb)
    outer_scale = min(phi.scale / ra, mp.sqrt(1 - c * c) / abs(c)) if c else phi.scale / ra
    inner_delta = steep_delta(phi.scale / sigma)
    kinked = not phi.smooth or inner_delta < CENTRE_PANEL
    dps = mp.dps
    sums = dict.fromkeys(_SUMS, mp.zero)
    for panel in gaussian_panels([(mp.zero, steep_delta(outer_scale))], density=False):
        for z, w in zip(panel.nodes, panel.weights, strict=True):
            ua = ra * z
            a0, a1, a2 = phi.values(ua)
            with mp.workdps(round(digits_at(abs(z), dps) - 2)):
                breaks = [(-slope * ua / sigma, inner_delta)] if kinked else []
                inner = gaussian_panels(breaks, density=False)
            totals = [mp.zero] * 4
            for part in inner:
                with mp.workprec(part.prec):
                    local = _inner_terms(phi, part.nodes, part.weights, ua, (kaa, kbb, kab, det))
                totals = [x + y for x, y in zip(totals, local, strict=True)]
            b0, b1, b_score, b2 = totals
            scale = w * ra * sigma * norm
            sums["G"] += scale * a0 * b0
            sums["G_k"] += scale * a1 * b1
            sums["G_k:score"] += scale * a0 * b_score
            sums["a2 b0"] += scale * (a2 if phi.price else ua * a1) * b0
            sums["a0 b2"] += scale * a0 * b2
    g_k = sums["G_k"]
    if phi.price:
        g_qa, g_qb = sums["a2 b0"] / 2, sums["a0 b2"] / 2
    else:
        g_qa = (sums["a2 b0"] - kab * g_k) / (2 * kaa)
        g_qb = (sums["a0 b2"] - kab * g_k) / (2 * kbb)
    return {"G": sums["G"], "G_k": g_k, "G_k:score": sums["G_k:score"], "G_qa": g_qa,
            "G_qb": g_qb}


def _inner_terms(phi: PhiFunctions, nodes: Sequence[Mpf], weights: Sequence[Mpf], ua: Mpf,
                 cov: tuple[Mpf, ...]) -> tuple[Mpf, ...]:
    """Sums over u_b of phi(u_b) p, phi'(u_b) p, phi(u_b) p score_k and phi''(u_b) p
    (or u_b phi'(u_b) p), with p the density up to its normalisation."""
    kaa, kbb, kab, det = cov
    half_inv = 1 / (2 * det)
    # exponent -(K_bb ua^2 - 2 K_ab ua ub + K_aa ub^2) / (2 det) = -(e0 + ub (e1 + e2 ub))
    e0, e1, e2 = kbb * ua * ua * half_inv, -2 * kab * ua * half_inv, kaa * half_inv
    # K^-1 u = (va, vb) = (ca - da ub, cb ub - db); score_k = va vb + K_ab / det
    ca, da, cb, db, shift = kbb * ua / det, kab / det, kaa / det, kab * ua / det, kab / det
    slope, sigma = kab / kaa, mp.sqrt(det / kaa)
    s0 = s1 = s2 = s3 = mp.zero
    for t, w in zip(nodes, weights, strict=True):
        ub = slope * ua + sigma * t
        b0, b1, b2 = phi.values(ub)
        density = w * mp.exp(-(e0 + ub * (e1 + e2 * ub)))
        value = b0 * density
        s0 += value
        s1 += b1 * density
        s2 += value * ((ca - da * ub) * (cb * ub - db) + shift)
        s3 += (b2 if phi.price else ub * b1) * density
    return s0, s1, s2, s3


def diag_by_density(phi: PhiFunctions, q: object) -> dict[str, Mpf]:
    """G_d = E[phi(u)^2] and dG_d/dq = E[phi^2 (u^2/q - 1)] / (2q), density explicit."""
    q = to_mpf(q)
    root, norm = mp.sqrt(q), 1 / mp.sqrt(2 * mp.pi * q)
    value = slope = mp.zero
    for panel in gaussian_panels([(mp.zero, steep_delta(phi.scale / root))], density=False):
        with mp.workprec(panel.prec):
            part0 = part1 = mp.zero
            for z, w in zip(panel.nodes, panel.weights, strict=True):
                u = root * z
                f0 = phi.values(u)[0]
                term = w * f0 * f0 * mp.exp(-u * u / (2 * q))
                part0 += term
                part1 += term * (u * u / q - 1) / (2 * q)
        value, slope = value + part0, slope + part1
    return {"G_d": value * root * norm, "G_d_q": slope * root * norm}


def _diff(fn: Callable[[Mpf], Mpf], at: Mpf, dps: int, target: int) -> Mpf:
    """mp.diff of ``fn`` at ``target`` digits, ``fn`` itself evaluated at ``dps`` digits.

    mp.diff's own default runs ``fn`` at twice the precision with a step
    2^-(prec+10), which would divide the quadrature's error by that step; here
    h = max(|at|, 1) 10^(-0.45 target) keeps the central-difference error (h^2
    times the third derivative) and the quadrature error / h both near
    10^-(0.9 target).
    """
    def at_fixed_precision(x: Mpf) -> Mpf:
        with mp.workdps(dps):
            return fn(x)

    step = max(abs(at), 1) * mp.mpf(10) ** (-0.45 * target)
    return mp.diff(at_fixed_precision, at, h=step)


def _relative(value: Mpf, reference: Mpf) -> Mpf:
    """Relative error; absolute where the reference is (nearly) zero."""
    scale = abs(reference)
    return abs(value - reference) / (scale if scale > mpmath.mpf(10) ** -10 else 1)


def check_closed_forms(activation_names: Sequence[str] = ("erf", "relu", "abs", "linear",
                                                          "leaky_relu:0.2"),
                       dps: int = 30,
                       points: Sequence[tuple[object, object, object]] = POINTS,
                       quantities: Sequence[str] = QUANTITIES,
                       diff_dps: int | None = None) -> list[CheckRow]:
    """Worst relative error of each closed form against quadrature, per activation.

    ``points`` are (K_aa, K_bb, correlation) with |correlation| < 1; the diagonal
    quantities are checked at each point's K_aa and K_bb. In the ``mp.diff`` rows
    the quadrature runs at ``diff_dps`` digits (default ``dps + 12``). Where the
    closed form is below 1e-10 (G_qa of the identity is 0) the error is absolute.
    """
    unknown = set(quantities) - set(QUANTITIES)
    if unknown:
        raise ValueError(f"unknown quantities {sorted(unknown)}; allowed {QUANTITIES}")
    diff_dps = diff_dps or dps + 12
    rows = []
    for name in activation_names:
        activation = resolve(name)
        closed = mp_expectations(activation, dps)
        if closed.kind != "exact":
            raise ValueError(f"{name}: no closed form to check")
        phi = phi_functions(activation)
        worst = dict.fromkeys(quantities, mp.zero)
        with working_precision(dps):
            for point in points:
                kaa, kbb, corr = (to_mpf(v) for v in point)
                kab = corr * mp.sqrt(kaa * kbb)
                _check_point(phi, closed, (kaa, kbb, kab), quantities, worst,
                             (diff_dps, dps))
        rows += [CheckRow(name, key, len(points), float(worst[key])) for key in quantities]
    return rows


def _check_point(phi: PhiFunctions, closed: MpExpectations, point: tuple[Mpf, Mpf, Mpf],
                 quantities: Sequence[str], worst: dict[str, Mpf], digits: tuple[int, int]
                 ) -> None:
    kaa, kbb, kab = point
    diff_dps, dps = digits
    reference = dict(zip(("G", "G_k", "G_qa", "G_qb"), closed.pair(kaa, kbb, kab), strict=True))
    found: dict[str, list[tuple[Mpf, Mpf]]] = {}
    if set(quantities) & set(PAIR_QUANTITIES):
        values = pair_by_density(phi, kaa, kbb, kab)
        for key in set(quantities) & set(PAIR_QUANTITIES):
            found[key] = [(values[key], reference[REFERENCE[key]])]
    if set(quantities) & {"G_d", "G_d_q"}:
        for q in (kaa, kbb):
            values = diag_by_density(phi, q)
            for key, ref in zip(("G_d", "G_d_q"), closed.diag(q), strict=True):
                found.setdefault(key, []).append((values[key], ref))
    if "G_k:diff" in quantities:
        slope = _diff(lambda x: pair_by_density(phi, kaa, kbb, x)["G"], kab, diff_dps, dps)
        found["G_k:diff"] = [(slope, reference["G_k"])]
    if "G_d_q:diff" in quantities:
        found["G_d_q:diff"] = [
            (_diff(lambda x: diag_by_density(phi, x)["G_d"], q, diff_dps, dps),
             closed.diag(q)[1])
            for q in (kaa, kbb)]
    for key, pairs in found.items():
        for value, ref in pairs:
            worst[key] = max(worst[key], _relative(value, ref))
