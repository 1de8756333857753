"""Gaussian quadrature rules for the one-loop moments (copied verbatim into generated code).

``gaussian_rule(center, scale, wide)`` gives nodes and weights with
``sum(w * f(x)) ~ E f(center + scale Z)``, ``Z ~ N(0, 1)``, elementwise over
arrays of centres and scales. Activations have their features on the unit
scale near the origin. A narrow Gaussian (scale < NARROW) sees a smooth
integrand: Gauss-Hermite. A wide one sees the activation's transition as a
step, where Gauss-Hermite converges slowly: composite Gauss-Legendre in x over
``[center -/+ TAIL scale]``, cut at ``0, -/+ EDGE/2, -/+ EDGE`` (four panels
across the transition at better than unit resolution) and at the centre and
``centre -/+ 3 scale`` (the Gaussian itself, wherever it sits). Elements are
grouped by rule, so each group is one vectorised product rule.

``pair_terms`` integrates products ``A(x) B(y)`` of a bivariate Gaussian by
conditioning, ``y | x ~ N(c x / va, vb - c^2 / va)``: the outer and the inner
integral each get a rule of their own.
"""

import numpy

PANEL = 16
PANELS = 9  # cut at the Gaussian's centre, centre -/+ 3 scale and across the transition
TAIL = 12.0
EDGE = 5.0
NARROW = 0.8
NARROW_NODES = 96
_GL_Z, _GL_W = numpy.polynomial.legendre.leggauss(PANEL)
_GH_Z, _GH_W = numpy.polynomial.hermite_e.hermegauss(NARROW_NODES)
_GH_W = _GH_W / numpy.sqrt(2.0 * numpy.pi)


def gaussian_rule(center, scale, wide):
    """Nodes and weights for E f(center + scale Z): Gauss-Hermite (NARROW_NODES nodes) or,
    if ``wide``, composite Gauss-Legendre (PANELS PANEL nodes); shape (..., nodes)."""
    center, scale = numpy.broadcast_arrays(numpy.asarray(center, dtype=float),
                                           numpy.asarray(scale, dtype=float))
    c, s = center[..., None], scale[..., None]
    if not wide:
        return c + s * _GH_Z, numpy.broadcast_to(_GH_W, c.shape[:-1] + _GH_W.shape)
    lo, hi = c - TAIL * s, c + TAIL * s
    inner = [numpy.clip(EDGE * t, lo, hi) for t in (-1.0, -0.5, 0.0, 0.5, 1.0)]
    cuts = numpy.sort(numpy.concatenate([lo, c - 3 * s, c, c + 3 * s, *inner, hi], axis=-1),
                      axis=-1)
    xs, ws = [], []
    for k in range(PANELS):
        a, b = cuts[..., k:k + 1], cuts[..., k + 1:k + 2]
        half = 0.5 * (b - a)
        x = 0.5 * (a + b) + half * _GL_Z
        u = (x - c) / s
        xs.append(x)
        ws.append(half * _GL_W * numpy.exp(-0.5 * u * u) / (numpy.sqrt(2.0 * numpy.pi) * s))
    return numpy.concatenate(xs, axis=-1), numpy.concatenate(ws, axis=-1)


def pair_terms(va, vb, c, terms, block=1 << 19):
    """E[A(x) B(y)] * factor for each (A, B, factor) in terms; (x, y) ~ N(0, [[va, c], [c, vb]])."""
    va, vb, c = numpy.broadcast_arrays(*(numpy.asarray(a, dtype=float) for a in (va, vb, c)))
    shape = va.shape
    va, vb, c = (a.reshape(-1) for a in (va, vb, c))
    slope = numpy.divide(c, va, out=numpy.zeros_like(c), where=va > 0)  # va = 0: x = 0
    tau = numpy.sqrt(numpy.maximum(vb - c * slope, 0.0))
    out = [numpy.empty(va.size) for _ in terms]
    wide_x, wide_y = numpy.sqrt(va) >= NARROW, tau >= NARROW
    for gx in (False, True):
        for gy in (False, True):
            index = numpy.flatnonzero((wide_x == gx) & (wide_y == gy))
            n = (PANELS * PANEL if gx else NARROW_NODES) * (PANELS * PANEL if gy
                                                            else NARROW_NODES)
            step = max(1, block // n)
            for start in range(0, index.size, step):
                sl = index[start:start + step]
                x, wx = gaussian_rule(numpy.zeros(sl.size), numpy.sqrt(va[sl]), gx)
                y, wy = gaussian_rule(slope[sl, None] * x, tau[sl, None], gy)
                cache_x, cache_y = {}, {}
                for o, (fa, fb, factor) in zip(out, terms, strict=True):
                    if fa not in cache_x:
                        cache_x[fa] = fa(x) * wx
                    if fb not in cache_y:
                        cache_y[fb] = numpy.einsum("mij,mij->mi", fb(y), wy)
                    o[sl] = factor * numpy.einsum("mi,mi->m", cache_x[fa], cache_y[fb])
    return tuple(o.reshape(shape) for o in out)


def one_dim_terms(v, funcs_factors):
    """E[f(u)] * factor for each (f, factor); u ~ N(0, v)."""
    v = numpy.asarray(v, dtype=float)
    flat = v.reshape(-1)
    out = [numpy.empty(flat.size) for _ in funcs_factors]
    wide = numpy.sqrt(flat) >= NARROW
    for g in (False, True):
        index = numpy.flatnonzero(wide == g)
        if index.size:
            x, w = gaussian_rule(numpy.zeros(index.size), numpy.sqrt(flat[index]), g)
            for o, (f, factor) in zip(out, funcs_factors, strict=True):
                o[index] = numpy.sum(f(x) * w, axis=-1) * factor
    return tuple(o.reshape(v.shape) for o in out)
