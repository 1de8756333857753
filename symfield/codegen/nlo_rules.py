"""Gaussian quadrature rules for the one-loop moments (copied verbatim into generated code).

``gaussian_rule(center, scale)`` gives nodes and weights with
``sum(w * f(x)) ~ E f(center + scale Z)``, ``Z ~ N(0, 1)``, elementwise over
arrays of centres and scales. Activations have their features on the unit
scale near the origin. A narrow Gaussian (scale < NARROW) sees a smooth integrand:
Gauss-Hermite. A wide one sees the activation's transition as a step, where
Gauss-Hermite converges slowly: composite Gauss-Legendre in x over
``[center -/+ TAIL scale]``, split at ``0, -/+ EDGE/2, -/+ EDGE`` so that four panels cover the
transition at better than unit resolution. The same number of nodes either way.

``pair_terms`` integrates products ``A(x) B(y)`` of a bivariate Gaussian by
conditioning, ``y | x ~ N(c x / va, vb - c^2 / va)``: the outer and the inner
integral each get a rule of their own.
"""

import numpy

PANEL = 24
PANELS = 6  # two tails, four across the transition
TAIL = 12.0
EDGE = 5.0
NARROW = 1.2
_GL_Z, _GL_W = numpy.polynomial.legendre.leggauss(PANEL)
_GH_Z, _GH_W = numpy.polynomial.hermite_e.hermegauss(PANELS * PANEL)
_GH_W = _GH_W / numpy.sqrt(2.0 * numpy.pi)


def gaussian_rule(center, scale):
    """Nodes and weights (shape (..., PANELS PANEL)) for E f(center + scale Z)."""
    center, scale = numpy.broadcast_arrays(numpy.asarray(center, dtype=float),
                                           numpy.asarray(scale, dtype=float))
    c, s = center[..., None], scale[..., None]
    narrow = s < NARROW
    x_gh, w_gh = c + s * _GH_Z, numpy.broadcast_to(_GH_W, c.shape[:-1] + _GH_W.shape)
    safe = numpy.where(narrow, 1.0, s)
    lo, hi = c - TAIL * safe, c + TAIL * safe
    inner = [numpy.clip(EDGE * t, lo, hi) for t in (-1.0, -0.5, 0.0, 0.5, 1.0)]
    cuts = [lo, *inner, hi]
    xs, ws = [], []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        half = 0.5 * (b - a)
        x = 0.5 * (a + b) + half * _GL_Z
        u = (x - c) / safe
        xs.append(x)
        ws.append(half * _GL_W * numpy.exp(-0.5 * u * u) / (numpy.sqrt(2.0 * numpy.pi) * safe))
    x_gl, w_gl = numpy.concatenate(xs, axis=-1), numpy.concatenate(ws, axis=-1)
    return numpy.where(narrow, x_gh, x_gl), numpy.where(narrow, w_gh, w_gl)


def pair_terms(va, vb, c, terms, block=1 << 19):
    """E[A(x) B(y)] * factor for each (A, B, factor) in terms; (x, y) ~ N(0, [[va, c], [c, vb]])."""
    va, vb, c = numpy.broadcast_arrays(*(numpy.asarray(a, dtype=float) for a in (va, vb, c)))
    shape = va.shape
    va, vb, c = (a.reshape(-1) for a in (va, vb, c))
    slope = c / va
    tau = numpy.sqrt(numpy.maximum(vb - c * slope, 0.0))
    out = [numpy.empty(va.size) for _ in terms]
    n = PANELS * PANEL
    step = max(1, block // (n * n))
    for start in range(0, va.size, step):
        sl = slice(start, start + step)
        x, wx = gaussian_rule(numpy.zeros(va[sl].shape), numpy.sqrt(va[sl]))
        y, wy = gaussian_rule(slope[sl, None] * x, tau[sl, None])
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
    x, w = gaussian_rule(numpy.zeros(v.shape), numpy.sqrt(v))
    return tuple(numpy.sum(f(x) * w, axis=-1) * factor for f, factor in funcs_factors)
