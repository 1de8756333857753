"""mpmath evaluation of the one-loop terms (``symfield nlo --dps``).

The same derived expressions as the generated float64 module
(:func:`symfield.expansion.one_dim_moments`, :func:`symfield.expansion.pair_plan`)
are evaluated with mpmath. :class:`MpMoments` can integrate the quadrature
moments with ``mpmath.quad`` (tanh-sinh) on the Price integrands, but at 30
digits that takes minutes per layer pair, so ``symfield nlo --dps`` accepts
only families whose one-loop moments are closed forms (the leaky-ReLU family).
The layer assembly is a separate, plain-loop implementation of the structured
one-loop form (``A = (I - R)^(-1)``, ``V = A Q A^T``, ``N<dF> = A[(1/2) H:V + T]``).
"""

from __future__ import annotations

import functools

import mpmath
import sympy as sp

from .activations import Activation, resolve
from .expansion import (
    COV,
    KINDS,
    PAIR_OUTPUTS,
    SA,
    SB,
    THETA,
    V_A,
    V_B,
    kind_function,
    one_dim_moments,
    pair_plan,
)
from .gaussian import Q, X, derivative
from .nlo import check_p1_kernel, layout
from .spec import NetworkSpec, SpecError


def _nth(g: sp.Expr, n: int) -> sp.Expr:
    for _ in range(n):
        g = derivative(g)
    return g


class MpMoments:
    """One-loop moments of a family at mpmath precision (closed forms or mpmath.quad)."""

    def __init__(self, activation: Activation):
        family = activation.family
        values = {p: sp.nsimplify(activation.param_values[p.name]) for p in family.params}
        self.one: dict[str, object] = {}
        self.g: dict[tuple[str, int], object] = {}
        for kind in KINDS:
            closed = one_dim_moments(family, kind)
            if closed is not None:
                self.one[kind] = [sp.lambdify(Q, e.subs(values), "mpmath") for e in closed]
            for order in range(5):
                expr = _nth(kind_function(family, kind), order).subs(values)
                self.g[(kind, order)] = sp.lambdify(X, expr, "mpmath")
        self.pairs: dict[tuple[str, str], object] = {}
        for ki in KINDS:
            for kj in KINDS:
                plan = pair_plan(family, ki, kj)
                if plan.method == "closed":
                    funcs = {}
                    for name in PAIR_OUTPUTS:
                        expr, m_syms = _with_moment_symbols(plan.exprs[name])
                        args = [V_A, V_B, COV, SA, SB, THETA, *m_syms]
                        funcs[name] = (sp.lambdify(args, expr.subs(values), "mpmath"), m_syms)
                    self.pairs[(ki, kj)] = ("closed", funcs)
                else:
                    self.pairs[(ki, kj)] = ("quadrature", plan.price)

    @staticmethod
    def _expect(f, v):
        """E f(u), u ~ N(0, v), by tanh-sinh on both half-lines."""
        s = mpmath.sqrt(v)
        return mpmath.quad(lambda z: f(s * z) * mpmath.npdf(z), [-mpmath.inf, 0, mpmath.inf])

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one provider per command
    def one_dim(self, kind: str, v) -> tuple:
        if kind in self.one:
            return tuple(mpmath.mpf(f(v)) for f in self.one[kind])
        return tuple(self._expect(self.g[(kind, 2 * n)], v) / 2**n for n in range(3))

    @functools.lru_cache(maxsize=4096)  # noqa: B019
    def pair(self, ki: str, kj: str, va, vb, c) -> tuple:
        method, data = self.pairs[(ki, kj)]
        if method == "closed":
            sa, sb = mpmath.sqrt(va), mpmath.sqrt(vb)
            theta = mpmath.atan2(mpmath.sqrt(max(va * vb - c * c, 0)), c)
            # the 1-D moments on side a belong to kind ki, on side b to kj (Price's series)
            moments = {"a": self.one_dim(ki, va), "b": self.one_dim(kj, vb)}
            out = []
            for name in PAIR_OUTPUTS:
                func, m_syms = data[name]
                extra = [moments[s.name[-1]][int(s.name[1])] for s in m_syms]
                out.append(mpmath.mpf(func(va, vb, c, sa, sb, theta, *extra)))
            return tuple(out)
        r = c / mpmath.sqrt(va * vb)
        s = mpmath.sqrt(max(1 - r * r, 0))
        sa, sb = mpmath.sqrt(va), mpmath.sqrt(vb)
        out = []
        for name in PAIR_OUTPUTS:
            di, dj, factor = data[name]
            fa, fb = self.g[(ki, di)], self.g[(kj, dj)]
            value = mpmath.quad(
                lambda z1, z2, fa=fa, fb=fb: fa(sa * z1) * fb(sb * (r * z1 + s * z2))
                * mpmath.npdf(z1) * mpmath.npdf(z2),
                [-mpmath.inf, 0, mpmath.inf], [-mpmath.inf, 0, mpmath.inf])
            out.append(mpmath.mpf(factor) * value)
        return tuple(out)


def _with_moment_symbols(expr: sp.Expr) -> tuple[sp.Expr, list[sp.Symbol]]:
    """m_<kind>_k(v_a) -> symbol m<k>_a (v_b -> _b); returns the symbols used, sorted."""
    used: set[sp.Symbol] = set()

    def rename(f: sp.Expr) -> sp.Expr:
        order = f.func.__name__.rsplit("_", 1)[1]
        side = "a" if f.args[0] == V_A else "b"
        sym = sp.Symbol(f"m{order}_{side}")
        used.add(sym)
        return sym

    out = expr.replace(lambda e: isinstance(e, sp.core.function.AppliedUndef)
                       and e.func.__name__.startswith("m_"), rename)
    return out, sorted(used, key=lambda s: s.name)


def one_loop_mp(spec: NetworkSpec, K0, moments: MpMoments, dps: int) -> dict:
    """The structured one-loop terms at ``dps`` digits (P = 1), plain loops."""
    with mpmath.workdps(dps + 10):
        gamma, beta = ((mpmath.mpf(1), mpmath.mpf(str(spec.rho))) if spec.net == "resnet"
                       else (mpmath.mpf(0), mpmath.mpf(1)))
        sw2, sb2 = mpmath.mpf(str(spec.sw2)), mpmath.mpf(str(spec.sb2))
        fl = layout(spec)
        n = len(fl.names)
        depth = spec.depth
        sigma = [mpmath.mpf(str(K0))]
        for _ in range(depth):
            m = moments.one_dim("phi2", sigma[-1])[0]
            sigma.append(gamma**2 * sigma[-1] + beta**2 * (sb2 + sw2 * m))
        coef = [mpmath.mpf(str(x)) for x in fl.coef]
        const = [mpmath.mpf(str(x)) for x in fl.const]
        lay = [int(x) for x in fl.layer]
        mom = [moments.one_dim(fl.kinds[f], sigma[lay[f]]) for f in range(n)]
        mean = [const[f] + coef[f] * mom[f][0] for f in range(n)]
        c_index = [int(i) for i in fl.c_index]

        def w(s: int, k: int):  # dSigma^(s)/dC^(k)
            return gamma ** (2 * (s - k)) * beta**2 if 1 <= k <= s else mpmath.mpf(0)

        R = mpmath.zeros(n, n)
        for f in range(n):
            for k, ci in enumerate(c_index, start=1):
                R[f, ci] = coef[f] * mom[f][1] * w(lay[f], k)
        A = mpmath.inverse(mpmath.eye(n) - R)
        Qm, Qva, Qk = mpmath.zeros(n, n), mpmath.zeros(n, n), mpmath.zeros(n, n)
        for f in range(n):
            for g in range(f, n):
                lo = min(lay[f], lay[g])
                M, M_va, M_vb, M_k = moments.pair(fl.kinds[f], fl.kinds[g], sigma[lay[f]],
                                                  sigma[lay[g]],
                                                  gamma ** abs(lay[f] - lay[g]) * sigma[lo])
                bb = coef[f] * coef[g]
                Qm[f, g] = Qm[g, f] = bb * (M - mom[f][0] * mom[g][0])
                Qva[f, g] = bb * (M_va - mom[f][1] * mom[g][0])
                Qva[g, f] = bb * (M_vb - mom[f][0] * mom[g][1])
                Qk[f, g] = Qk[g, f] = bb * M_k
        V = A * Qm * A.T
        omega = mpmath.zeros(depth + 1, n)
        for s in range(depth + 1):
            for g in range(n):
                omega[s, g] = mpmath.fsum(w(s, k) * A[ci, g]
                                          for k, ci in enumerate(c_index, start=1))
        var_sigma = [mpmath.fsum(omega[s, a] * Qm[a, b] * omega[s, b] for a in range(n)
                                 for b in range(n)) for s in range(depth + 1)]
        tad = [coef[f] * mom[f][2] * var_sigma[lay[f]] / 2 for f in range(n)]
        T = []
        for f in range(n):
            total = mpmath.mpf(0)
            for g in range(n):
                lag = abs(lay[f] - lay[g])
                total += (Qva[f, g] * omega[lay[f], g] + Qva[g, f] * omega[lay[g], g]
                          + Qk[f, g] * gamma**lag * omega[min(lay[f], lay[g]), g])
            T.append(total)
        shift = [mpmath.fsum(A[f, g] * (tad[g] + T[g]) for g in range(n)) for f in range(n)]
        tadpole_only = [mpmath.fsum(A[f, g] * tad[g] for g in range(n)) for f in range(n)]
        return {"fields": fl, "mean": mean, "V": V, "shift": shift,
                "tadpole_only": tadpole_only, "T": T}


def run_mp(spec: NetworkSpec, K0: object, dps: int) -> dict:
    """``symfield nlo --dps``: the JSON object with decimal strings of ``dps`` digits."""
    if dps > 200:
        raise SpecError("dps", dps, "must be <= 200")
    k0 = check_p1_kernel(K0)
    activation = resolve(spec.activation)
    numeric = [f"{ki} x {kj}" for ki in KINDS for kj in KINDS
               if pair_plan(activation.family, ki, kj).method != "closed"]
    if numeric:
        raise SpecError("dps", dps, f"the mpmath path needs closed-form one-loop moments; "
                                    f"{activation.family.name} has 2-D quadrature moments "
                                    f"({', '.join(numeric)}): use relu, abs, linear or "
                                    f"leaky_relu:ALPHA, or drop --dps")
    moments = MpMoments(activation)
    with mpmath.workdps(dps + 10):
        res = one_loop_mp(spec, k0, moments, dps)
    fl = res["fields"]

    def fmt(x):
        return mpmath.nstr(x, dps, strip_zeros=False)

    def per_layer(values, index):
        return [[[fmt(values[int(i)])]] for i in index]

    V = res["V"]
    c, k, out = fl.c_index, fl.k_index, fl.out_index
    return {
        "spec": spec.to_dict(), "K0": [[k0]], "method": f"mpmath ({dps} digits)",
        "C_star": per_layer(res["mean"], c),
        "n_var_C": [[[fmt(V[int(i), int(i)])]] for i in c],
        "n_mean_shift_C": per_layer(res["shift"], c),
        "n_cov_C_layers": [[fmt(V[int(i), int(j)]) for j in c] for i in c],
        "K_star": per_layer(res["mean"], k),
        "n_var_K": [[[fmt(V[int(i), int(i)])]] for i in k],
        "n_mean_shift_K": per_layer(res["shift"], k),
        "n_cov_K_layers": [[fmt(V[int(i), int(j)]) for j in k] for i in k],
        "output": {"K_out_star": [[fmt(res["mean"][out])]], "n_var": [[fmt(V[out, out])]],
                   "n_mean_shift": [[fmt(res["shift"][out])]],
                   "n_mean_shift_tadpole_only": [[fmt(res["tadpole_only"][out])]]},
        "tadpole_only": {"n_mean_shift_C": per_layer(res["tadpole_only"], c),
                         "n_mean_shift_K": per_layer(res["tadpole_only"], k),
                         "n_mean_shift_output": [[fmt(res["tadpole_only"][out])]]},
        "noise_diagram_T": {"C": per_layer(res["T"], c), "output": [[fmt(res["T"][out])]]},
        "warnings": [],
    }
