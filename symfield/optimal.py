"""Optimal residual scaling rho*: the rho that maximises the output response chi_out.

rho* is a root of d chi_out / d rho, computed by the generated forward-mode
code (``resnet_drho``: the derivative of the layer loop, derived by SymPy), not
by finite differences of a grid. The search is vectorised: one batched call
evaluates the derivative on a grid of rho for every entry of chi_out, brackets
its sign changes, and a batched safeguarded secant (Illinois) iteration refines
all brackets at once. A unique interior maximum is checked, not assumed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .activations import resolve
from .kernel import load_module
from .spec import SpecError, check_depth, check_kernel, check_real

#: Grid of u = rho sqrt(L) on which sign changes are bracketed (rho* sqrt(L) = O(1)).
GRID_U = np.geomspace(1e-3, 30.0, 96)
RTOL = 1e-13
MAX_ITERATIONS = 200
#: Typical number of d chi_out / d rho passes after the scan (for progress estimates).
EXPECTED_ITERATIONS = 24
#: Typical number of mpmath passes of one refinement (findroot on mp.diff, curvature).
EXPECTED_MP_PASSES = 24


@dataclass
class Optimum:
    """rho* for one entry of chi_out at one depth (None where there is no interior maximum)."""

    depth: int
    entry: tuple[int, int]
    rho_star: float | None
    chi_out_max: float | None
    second_derivative: float | None   # d^2 log chi_out / d rho^2 at rho* (negative: maximum)
    reason: str = ""
    iterations: int = 0


@dataclass
class OptimalRho:
    """rho* for every requested depth and entry."""

    activation: str
    sw2: float
    sb2: float
    K0: np.ndarray
    depths: list[int]
    optima: dict[tuple[int, int], list[Optimum]] = field(default_factory=dict)

    def rho_star(self, entry: tuple[int, int]) -> list[float | None]:
        return [o.rho_star for o in self.optima[entry]]

    def exponent(self, entry: tuple[int, int]) -> float | None:
        """Slope of log rho* against log L over the depths with an optimum (None unless
        there are optima at two or more distinct depths: see :meth:`exponent_reason`)."""
        points = [(math.log(o.depth), math.log(o.rho_star)) for o in self.optima[entry]
                  if o.rho_star is not None]
        if self.exponent_reason(entry):
            return None
        x, y = np.array(points).T
        return float(np.polyfit(x, y, 1)[0])

    def exponent_reason(self, entry: tuple[int, int]) -> str:
        """Why there is no exponent ("" if there is one)."""
        return exponent_reason([o.depth for o in self.optima[entry] if o.rho_star is not None])


def exponent_reason(depths: Sequence[int]) -> str:
    """A power law rho* ~ L^p needs optima at two or more distinct depths."""
    distinct = sorted(set(depths))
    if len(distinct) >= 2:
        return ""
    return ("a fitted exponent needs optima at two or more distinct depths; "
            + (f"only L = {distinct[0]} has one" if distinct else "no depth has one"))


def mp_exponent(depths: Sequence[int], rhos: Sequence[object]) -> object | None:
    """Least-squares slope of log rho* against log L in mpmath (None without two depths)."""
    import mpmath

    points = [(mpmath.log(d), mpmath.log(r)) for d, r in zip(depths, rhos, strict=True)
              if r is not None]
    if exponent_reason([d for d, r in zip(depths, rhos, strict=True) if r is not None]):
        return None
    n = len(points)
    mx = mpmath.fsum(x for x, _ in points) / n
    my = mpmath.fsum(y for _, y in points) / n
    return (mpmath.fsum((x - mx) * (y - my) for x, y in points)
            / mpmath.fsum((x - mx) ** 2 for x, _ in points))


def optimal_rho(activation: str, sw2: float, sb2: float, K0: np.ndarray, depths: Sequence[int],
                *, sw2_out: float = 1.0, sb2_out: float = 0.0,
                entries: Sequence[tuple[int, int]] | None = None,
                progress: Callable[[float], None] | None = None) -> OptimalRho:
    """rho* per depth for each entry (a, b) of chi_out (default: all a <= b).

    ``progress`` (optional) is called with the fraction of the work done (the work
    of a depth counted proportional to it)."""
    act = resolve(activation)
    sw2 = check_real("sw2", sw2, minimum=0.0, what="a weight variance")
    sb2 = check_real("sb2", sb2, minimum=0.0, what="a bias variance")
    K0 = check_kernel("K0", K0)
    if len(depths) == 0:
        raise SpecError("depths", list(depths), "must list at least one depth >= 1")
    depths = [check_depth("depths", d) for d in depths]
    size = K0.shape[0]
    entries = list(entries) if entries is not None else [
        (a, b) for a in range(size) for b in range(a, size)]
    result = OptimalRho(act.label, sw2, sb2, K0, depths, {e: [] for e in entries})
    total, done = sum(depths), 0
    for depth in depths:
        report = None if progress is None else (
            lambda f, done=done, depth=depth: progress((done + depth * f) / total))
        (found,) = optimize(act, K0, depth, np.array([sw2]), np.array([sb2]), entries,
                            sw2_out=sw2_out, sb2_out=sb2_out, progress=report)
        done += depth
        for entry in entries:
            result.optima[entry].append(found[entry])
    return result


def optimal_rho_map(activation: str, sw2: np.ndarray, sb2: np.ndarray, K0: np.ndarray,
                    depth: int, entries: Sequence[tuple[int, int]], *, sw2_out: float = 1.0,
                    sb2_out: float = 0.0) -> list[dict[tuple[int, int], Optimum]]:
    """rho* at one depth for every (sw2[h], sb2[h]) at once (vectorised over the grid)."""
    act = resolve(activation)
    K0 = check_kernel("K0", K0)
    depth = check_depth("depth", depth)
    sw2 = np.asarray([check_real("sw2", v, minimum=0.0) for v in np.ravel(sw2)])
    sb2 = np.asarray([check_real("sb2", v, minimum=0.0) for v in np.ravel(sb2)])
    return optimize(act, K0, depth, sw2, sb2, list(entries), sw2_out=sw2_out, sb2_out=sb2_out)


def optimize(act, K0: np.ndarray, depth: int, sw2: np.ndarray, sb2: np.ndarray,
             entries: list[tuple[int, int]], *, sw2_out: float, sb2_out: float,
             grid_u: np.ndarray = GRID_U, progress: Callable[[float], None] | None = None
             ) -> list[dict[tuple[int, int], Optimum]]:
    """The batched core: scan d log chi_out / d rho on a rho grid for every hyperparameter
    pair h, bracket the sign changes, refine all brackets together.

    ``progress`` gets the fraction done: the scan counts for half of the work, the
    root iterations (about ``EXPECTED_ITERATIONS`` passes) for the other half."""
    module = load_module(act)
    params = act.param_values
    grid = grid_u / math.sqrt(depth)
    n_h, n_g = len(sw2), len(grid)
    rows, cols = np.array(entries).T

    passes = [0]

    def scan_progress(f: float) -> None:
        if progress is not None:
            progress(0.5 * f)

    def slope_at(rho: np.ndarray, h: np.ndarray, report=None) -> tuple[np.ndarray, dict]:
        if report is None and progress is not None:
            passes[0] += 1
            progress(0.5 + 0.5 * min(1.0, passes[0] / EXPECTED_ITERATIONS))
        with np.errstate(all="ignore"):
            extra = {} if report is None else {"progress": report}
            out = module.resnet_drho(K0, rho=rho, sw2=sw2[h], sb2=sb2[h], depth=depth,
                                     sw2_out=sw2_out, sb2_out=sb2_out, **params, **extra)
        return out["dlog_chi_out_drho"], out

    h_scan = np.repeat(np.arange(n_h), n_g)
    slope, scan = slope_at(np.tile(grid, n_h), h_scan,
                           scan_progress if progress is not None else None)
    slope = slope[:, rows, cols].reshape(n_h, n_g, len(entries))
    trusted = np.ones((n_h, n_g), dtype=bool)
    if module.KIND == "quadrature":
        # outside the variances where the quadrature accuracy was measured the moments
        # (and spurious sign changes of the slope) cannot be trusted: scan only inside
        variance = np.max(np.diagonal(scan["K"], axis1=-2, axis2=-1), axis=-1)
        trusted = (variance <= module.QUADRATURE_Q_MAX).reshape(n_h, n_g)
    found: list[dict[tuple[int, int], Optimum]] = [{} for _ in range(n_h)]
    brackets = []  # (h, entry index, lo, hi)
    for h in range(n_h):
        for index, entry in enumerate(entries):
            outcome = _bracket(depth, entry, grid[trusted[h]], slope[h, trusted[h], index])
            a, b = entry
            if (isinstance(outcome, Optimum) and outcome.reason.startswith("no finite slope")
                    and a != b and K0[a, a] * K0[b, b] - K0[a, b] ** 2 <= 0):
                outcome.reason += (f" (inputs {a} and {b} have |c| = 1: for a kinked phi "
                                   "d^2 G / dK_ab^2 is infinite there, so d chi_ab / d rho "
                                   "is not available by forward differentiation)")
            if isinstance(outcome, Optimum) and not trusted[h].all():
                outcome.reason += (f" (scan limited to variances <= {module.QUADRATURE_Q_MAX:g},"
                                   " where the quadrature accuracy is stated)")
            if isinstance(outcome, Optimum):
                found[h][entry] = outcome
            else:
                brackets.append((h, index, *outcome))
    if brackets:
        h = np.array([b[0] for b in brackets])
        which = np.array([b[1] for b in brackets])
        lo = np.array([b[2] for b in brackets])
        hi = np.array([b[3] for b in brackets])
        take = np.arange(len(brackets))

        def entry_slope(rho: np.ndarray) -> tuple[np.ndarray, dict]:
            values, out = slope_at(rho, h)
            return values[take, rows[which], cols[which]], out

        rho, iterations = _illinois(entry_slope, lo, hi)
        _, at_root = entry_slope(rho)
        step = 1e-5 * rho
        curvature = (entry_slope(rho + step)[0] - entry_slope(rho - step)[0]) / (2 * step)
        chi = at_root["chi_out"][take, rows[which], cols[which]]
        for j, (hj, index, _, _) in enumerate(brackets):
            entry = entries[index]
            is_max = bool(curvature[j] < 0)
            found[hj][entry] = Optimum(
                depth, entry, float(rho[j]) if is_max else None,
                float(chi[j]) if is_max else None, float(curvature[j]),
                "" if is_max else "the stationary point is not a maximum", iterations)
    return found


def _illinois(f, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
    """Vectorised Illinois (safeguarded regula falsi) for roots bracketed in [a, b]."""
    fa, _ = f(a)
    fb, _ = f(b)
    side = np.zeros(len(a), dtype=int)
    r = 0.5 * (a + b)
    iterations = 0
    while iterations < MAX_ITERATIONS:
        iterations += 1
        previous = r
        r = (fa * b - fb * a) / (fa - fb)
        r = np.where(np.isfinite(r) & (r > a) & (r < b), r, 0.5 * (a + b))
        fr, _ = f(r)
        on_b = np.sign(fr) == np.sign(fb)
        on_a = ~on_b & (np.sign(fr) == np.sign(fa))
        fa = np.where(on_b & (side == -1), 0.5 * fa, fa)   # same side twice: halve the other
        fb = np.where(on_a & (side == 1), 0.5 * fb, fb)
        b, fb = np.where(on_b, r, b), np.where(on_b, fr, fb)
        a, fa = np.where(on_a, r, a), np.where(on_a, fr, fa)
        side = np.where(on_b, -1, np.where(on_a, 1, side))
        exact = ~on_a & ~on_b                                  # fr == 0
        a, b = np.where(exact, r, a), np.where(exact, r, b)
        if np.all((np.abs(r - previous) <= RTOL * r) | (b - a <= RTOL * b)):
            break
    return r, iterations


def _bracket(depth: int, entry: tuple[int, int], grid: np.ndarray,
             slope: np.ndarray) -> Optimum | tuple[float, float]:
    """A bracket (lo, hi) around the unique + to - sign change, or an Optimum with a reason."""
    finite = np.isfinite(slope)
    if not finite.all():
        grid, slope = grid[finite], slope[finite]
    if len(grid) < 2:
        return Optimum(depth, entry, None, None, None, "no finite slope on the rho grid")
    signs = np.sign(slope)
    down = np.flatnonzero((signs[:-1] > 0) & (signs[1:] < 0))
    up = np.flatnonzero((signs[:-1] < 0) & (signs[1:] > 0))
    span = f"rho in [{grid[0]:.3g}, {grid[-1]:.3g}]"
    if len(down) == 1 and len(up) == 0:
        i = down[0]
        return float(grid[i]), float(grid[i + 1])
    if len(down) == 0:
        trend = "increasing" if np.all(signs >= 0) else (
            "decreasing" if np.all(signs <= 0) else "without a maximum")
        return Optimum(depth, entry, None, None, None,
                       f"chi_out is monotone {trend} for {span}: no interior maximum")
    return Optimum(depth, entry, None, None, None,
                   f"{len(down)} local maxima and {len(up)} minima for {span}: not unique")


def refine_mp(activation: str, sw2: float, sb2: float, K0: np.ndarray, depth: int,
              entry: tuple[int, int], rho0: float, dps: int, *, sw2_out: float = 1.0,
              sb2_out: float = 0.0) -> tuple[object, object]:
    """rho* and chi_out(rho*) at ``dps`` digits: a root of d log chi_out / d rho on the
    mpmath path, started from the float64 optimum (the referee of the float64 root)."""
    found = refine_mp_full(activation, sw2, sb2, K0, depth, entry, rho0, dps, sw2_out=sw2_out,
                           sb2_out=sb2_out, second=False)
    return found.rho_star, found.chi_out_max


@dataclass
class MpOptimum:
    """rho*, chi_out(rho*) and d^2 ln chi_out / d rho^2 at rho* on the mpmath path."""

    rho_star: object
    chi_out_max: object
    second_derivative: object | None


def refine_mp_full(activation: str, sw2: float, sb2: float, K0: np.ndarray, depth: int,
                   entry: tuple[int, int], rho0: float, dps: int, *, sw2_out: float = 1.0,
                   sb2_out: float = 0.0, second: bool = True,
                   progress: Callable[[float], None] | None = None) -> MpOptimum:
    """:func:`refine_mp` plus the curvature d^2 ln chi_out / d rho^2 at the root (mpmath
    numerical differentiation at ``dps + 10`` digits). ``progress`` gets an estimate of
    the fraction done (about ``EXPECTED_MP_PASSES`` passes through the layers)."""
    import mpmath

    from .precision import propagate_mp
    from .spec import NetworkSpec

    a, b = entry
    work = dps + 10
    passes = [0]

    def report(fraction: float) -> None:
        if progress is not None:
            progress(min(0.99, (passes[0] + fraction) / EXPECTED_MP_PASSES))

    def run(spec: NetworkSpec) -> object:
        passes[0] += 1
        return propagate_mp(spec, K0, dps=work, progress=report)["chi_out"][a][b]

    def log_chi_out(rho: object) -> object:
        spec = NetworkSpec("resnet", activation, sw2, sb2, depth, rho=float(rho),
                           sw2_out=sw2_out, sb2_out=sb2_out)
        return mpmath.log(abs(run(_with_rho(spec, rho))))

    with mpmath.workdps(work):
        slope = lambda r: mpmath.diff(log_chi_out, r)  # noqa: E731
        root = mpmath.findroot(slope, mpmath.mpf(rho0), tol=mpmath.mpf(10) ** (-dps - 2))
        value = run(_with_rho(NetworkSpec("resnet", activation, sw2, sb2, depth,
                                          rho=float(root), sw2_out=sw2_out,
                                          sb2_out=sb2_out), root))
        curvature = mpmath.diff(log_chi_out, root, 2) if second else None
    return MpOptimum(root, value, curvature)


def _with_rho(spec, rho):  # type: ignore[no-untyped-def]
    """The (validated) spec with its rho replaced by an mpmath number: NetworkSpec stores
    floats, but the mpmath path must see rho at full precision while findroot moves it."""
    object.__setattr__(spec, "rho", rho)
    return spec
