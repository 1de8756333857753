"""One-loop terms for several inputs (P >= 2): the same structured form, numeric moments.

Experimental. The fields are the entries ``p = (a, b)``, ``a <= b``, of
``C^(l)``, ``K^(l)`` and ``C_out``; the structured one-loop form derived in
:mod:`symfield.expansion` is assembled entry-wise:

    dSigma^(s)_e = gamma^2 dSigma^(s-1)_e + beta^2 dC^(s)_e,
    Omega[s] = (gamma^2 + beta^2 J_s) Omega[s-1] + beta^2 E_{C^(s)},
    A[F] = e_F + b_F sum_e dm_F/dSigma_e Omega[s_F, e],
    V = A Q A^T,  N<dF> = A [(1/2) b_F d^2 m_F : Cov(dSigma^(s_F)) + T_F],
    T_F = sum_G sum_(r, e) dQ_FG/dSigma^(r)_e Omega[r, e, G].

Unlike the P = 1 path (closed forms and generated code), the moments here --
products of up to four functions of jointly Gaussian pre-activations -- are
evaluated by a product Gauss-Hermite rule in the distinct variables, and their
partials in the kernel entries by central differences of that rule (smooth in
the covariance through its symmetric square root). Smooth activations only.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .simulate import activation_function
from .spec import NetworkSpec, SpecError, check_kernel

STEP = 1e-4


@dataclass(frozen=True)
class Field:
    kind: str        # "C", "K" or "out"
    layer: int       # l (C^(l), K^(l)); L + 1 for the readout
    reads: int       # the layer s of h it averages over
    pair: tuple[int, int]
    coef: float
    const: float
    identity: bool   # g = x (K) instead of phi


def fields(spec: NetworkSpec, P: int) -> list[Field]:
    pairs = [(a, b) for a in range(P) for b in range(a, P)]
    out = []
    for l in range(1, spec.depth + 1):
        out += [Field("C", l, l - 1, p, spec.sw2, spec.sb2, False) for p in pairs]
        out += [Field("K", l, l, p, 1.0, 0.0, True) for p in pairs]
    out += [Field("out", spec.depth + 1, spec.depth, p, spec.sw2_out, spec.sb2_out, False)
            for p in pairs]
    return out


class Moments:
    """E[prod_i g_i(u_i)] over the per-neuron process, by product Gauss-Hermite
    (more nodes per dimension for fewer distinct variables)."""

    NODES_BY_DIM = {1: 80, 2: 60, 3: 30, 4: 20}

    def __init__(self, phi):
        self.phi = phi
        self.rules = {}
        for d, nodes in self.NODES_BY_DIM.items():
            z, w = np.polynomial.hermite_e.hermegauss(nodes)
            w = w / np.sqrt(2 * np.pi)
            grid = np.stack(np.meshgrid(*([z] * d), indexing="ij"), axis=-1).reshape(-1, d)
            weight = np.prod(np.stack(np.meshgrid(*([w] * d), indexing="ij"), axis=-1)
                             .reshape(-1, d), axis=1)
            self.rules[d] = (grid, weight)

    def expect(self, covs: np.ndarray, funcs: list) -> np.ndarray:
        """One value per covariance in the batch ``covs`` (k, d, d)."""
        covs = np.asarray(covs, dtype=float)
        d = covs.shape[-1]
        grid, weight = self.rules[d]
        vals, vecs = np.linalg.eigh(0.5 * (covs + np.swapaxes(covs, -1, -2)))
        roots = vecs * np.sqrt(np.clip(vals, 0.0, None))[..., None, :]
        u = np.einsum("pd,ked->kpe", grid, roots)
        prod = np.ones(u.shape[:2])
        for i, f in enumerate(funcs):
            prod = prod * f(u[..., i])
        return prod @ weight


def _sigma_cov(sigma: np.ndarray, gamma: float, variables: list[tuple[int, int]]) -> np.ndarray:
    """Cov((s, a), (t, b)) = gamma^|s-t| Sigma^(min(s, t))_ab."""
    n = len(variables)
    cov = np.empty((n, n))
    for i, (s, a) in enumerate(variables):
        for j, (t, b) in enumerate(variables):
            cov[i, j] = gamma ** abs(s - t) * sigma[min(s, t)][a, b]
    return cov


def run_p2(spec: NetworkSpec, K0: np.ndarray) -> dict:
    K0 = check_kernel("K0", K0)
    P = K0.shape[0]
    if P < 2:
        raise SpecError("K0", K0, "the P >= 2 path needs at least two inputs")
    phi = activation_function(spec.activation)
    gamma, beta = (1.0, float(spec.rho)) if spec.net == "resnet" else (0.0, 1.0)
    mom = Moments(phi)
    entries = [(a, b) for a in range(P) for b in range(a, P)]
    ne = len(entries)
    depth = spec.depth

    def g(identity):
        return (lambda x: x) if identity else phi

    def mean_of(F: Field, sig: np.ndarray) -> float:
        a, b = F.pair
        variables = sorted({(F.reads, a), (F.reads, b)})
        funcs = _merge([(F.reads, a), (F.reads, b)], [g(F.identity)] * 2, variables)
        return F.const + F.coef * mom.expect(_sigma_cov(sig, gamma, variables)[None], funcs)[0]

    # saddle: Sigma^(s) from the C fields
    sigma = [K0.copy()]
    for l in range(1, depth + 1):
        C = np.empty((P, P))
        for a, b in entries:
            C[a, b] = C[b, a] = mean_of(Field("C", l, l - 1, (a, b), spec.sw2, spec.sb2, False),
                                        sigma)
        sigma.append(gamma**2 * sigma[-1] + beta**2 * C)
    fl = fields(spec, P)
    n = len(fl)

    def perturbed(r: int, e: tuple[int, int], h: float) -> list[np.ndarray]:
        """Sigma with Sigma^(r)_e moved by h (only layer r; later layers are not recomputed:
        partials are at fixed other entries)."""
        out = [s.copy() for s in sigma]
        a, b = e
        out[r][a, b] += h
        if a != b:
            out[r][b, a] += h
        return out

    def partial(func, r, e, h=STEP):
        scale = max(abs(sigma[r][e]), 1e-3)
        return (func(perturbed(r, e, h * scale)) - func(perturbed(r, e, -h * scale))) / (
            2 * h * scale)

    def second(func, r, e1, e2, h=1e-3):
        inner = func
        s1, s2 = max(abs(sigma[r][e1]), 1e-3) * h, max(abs(sigma[r][e2]), 1e-3) * h

        def moved(d1, d2):
            out = [s.copy() for s in sigma]
            for (a, b), d in ((e1, d1), (e2, d2)):
                out[r][a, b] += d
                if a != b:
                    out[r][b, a] += d
            return out
        return (inner(moved(s1, s2)) - inner(moved(s1, -s2)) - inner(moved(-s1, s2))
                + inner(moved(-s1, -s2))) / (4 * s1 * s2)

    mean = np.array([mean_of(F, sigma) for F in fl])
    dm = np.zeros((n, ne))
    d2m = np.zeros((n, ne, ne))
    for i, F in enumerate(fl):
        for k, e in enumerate(entries):
            dm[i, k] = partial(lambda sg, F=F: mean_of(F, sg), F.reads, e)
            for k2, e2 in enumerate(entries):
                d2m[i, k, k2] = second(lambda sg, F=F: mean_of(F, sg), F.reads, e, e2)
    c_index = {(F.layer, F.pair): i for i, F in enumerate(fl) if F.kind == "C"}
    eidx = {e: k for k, e in enumerate(entries)}

    # response: Omega[s, e, G]
    omega = np.zeros((depth + 1, ne, n))
    for s in range(1, depth + 1):
        J = np.array([[dm[c_index[(s, e)], k2] for k2 in range(ne)] for e in entries])
        omega[s] = (gamma**2 * np.eye(ne) + beta**2 * J) @ omega[s - 1]
        for e in entries:
            omega[s, eidx[e], c_index[(s, e)]] += beta**2
    A = np.eye(n) + np.einsum("fe,fen->fn", dm, omega[[F.reads for F in fl]])

    # noise covariance and its partials in every Sigma^(r)_e it depends on, batched:
    # the base point and the +-h moves of each entry in one quadrature call
    Q = np.zeros((n, n))
    dq_cache = {}
    for i, j in itertools.combinations_with_replacement(range(n), 2):
        F, G = fl[i], fl[j]
        slots = [(F.reads, F.pair[0]), (F.reads, F.pair[1]), (G.reads, G.pair[0]),
                 (G.reads, G.pair[1])]
        funcs = _merge(slots, [g(F.identity)] * 2 + [g(G.identity)] * 2, sorted(set(slots)))
        variables = sorted(set(slots))
        moves = [(r, e) for r in sorted({F.reads, G.reads}) for e in entries]
        sigmas = [sigma]
        steps = []
        for r, e in moves:
            h = STEP * max(abs(sigma[r][e]), 1e-3)
            steps.append(h)
            sigmas += [perturbed(r, e, h), perturbed(r, e, -h)]
        four = mom.expect(np.array([_sigma_cov(sg, gamma, variables) for sg in sigmas]), funcs)
        prod = np.array([(mean_of(F, sg) - F.const) * (mean_of(G, sg) - G.const)
                         for sg in sigmas])
        q = F.coef * G.coef * four - prod
        Q[i, j] = Q[j, i] = q[0]
        for m, ((r, e), h) in enumerate(zip(moves, steps, strict=True)):
            dq_cache[(i, j, r, e)] = (q[1 + 2 * m] - q[2 + 2 * m]) / (2 * h)
    T = np.zeros(n)
    for i in range(n):
        total = 0.0
        for j in range(n):
            lo, hi = min(i, j), max(i, j)
            for r in sorted({fl[lo].reads, fl[hi].reads}):
                for e in entries:
                    total += dq_cache[(lo, hi, r, e)] * omega[r, eidx[e], j]
        T[i] = total
    V = A @ Q @ A.T
    tad = np.empty(n)
    for i, F in enumerate(fl):
        cov_sigma = omega[F.reads] @ Q @ omega[F.reads].T
        tad[i] = 0.5 * np.sum(d2m[i] * cov_sigma)  # d2m holds the coefficient b_F
    return {"fields": fl, "sigma": sigma, "mean": mean, "V": V, "shift": A @ (tad + T),
            "d2m": d2m, "omega": omega, "tad": tad,
            "tadpole_only": A @ tad, "T": T, "A": A, "Q": Q}


def _merge(slots, funcs, variables):
    """One function per distinct variable: the product of the functions of its slots."""
    merged = []
    for v in variables:
        fs = [f for s, f in zip(slots, funcs, strict=True) if s == v]
        merged.append(lambda x, fs=fs: np.prod([f(x) for f in fs], axis=0))
    return merged


@dataclass(frozen=True)
class _Names:
    names: tuple[str, ...]


@dataclass(frozen=True)
class P2Result:
    """The P >= 2 result in the shape :func:`symfield.nlo.compare` reads."""

    fields: _Names
    field_list: list
    mean: np.ndarray
    V: np.ndarray
    shift: np.ndarray
    tadpole_only: np.ndarray


def as_result(raw: dict) -> P2Result:
    names = tuple(f"{F.kind}^({F.layer})_{F.pair[0] + 1}{F.pair[1] + 1}" for F in raw["fields"])
    return P2Result(_Names(names), raw["fields"], raw["mean"], raw["V"], raw["shift"],
                    raw["tadpole_only"])


def field_samples(result: P2Result, C_samples: np.ndarray, K_samples: np.ndarray) -> np.ndarray:
    """Monte Carlo samples (n_init, n_fields) in the field order of ``result``."""
    cols = []
    for F in result.field_list:
        a, b = F.pair
        if F.kind == "C":
            cols.append(C_samples[:, F.layer - 1, a, b])
        elif F.kind == "K":
            cols.append(K_samples[:, F.layer, a, b])
        else:
            cols.append(C_samples[:, F.layer - 1, a, b])
    return np.stack(cols, axis=1)


def payload_p2(spec: NetworkSpec, K0: np.ndarray) -> dict:
    """The ``symfield nlo`` JSON for P >= 2: per layer P x P matrices (all times N)."""
    raw = run_p2(spec, K0)
    fl = raw["fields"]
    P = K0.shape[0]
    depth = spec.depth

    def matrices(values, kind):
        out = np.zeros((depth + 1, P, P))
        for F, v in zip(fl, values, strict=True):
            if F.kind == kind:
                layer = F.layer - 1 if kind != "K" else F.layer - 1
                a, b = F.pair
                out[layer, a, b] = out[layer, b, a] = v
        return out

    def layer_cov(kind):
        idx = [i for i, F in enumerate(fl) if F.kind == kind and F.pair == (0, 0)]
        return raw["V"][np.ix_(idx, idx)]

    var = np.diag(raw["V"])
    out = {}
    for name, kind in (("C", "C"), ("K", "K")):
        out[f"{name}_star"] = matrices(raw["mean"], kind)[:depth]
        out[f"n_var_{name}"] = matrices(var, kind)[:depth]
        out[f"n_mean_shift_{name}"] = matrices(raw["shift"], kind)[:depth]
        out[f"n_cov_{name}_layers"] = layer_cov(kind)
    readout = {k: matrices(v, "out")[depth] for k, v in (
        ("K_out_star", raw["mean"]), ("n_var", var), ("n_mean_shift", raw["shift"]),
        ("n_mean_shift_tadpole_only", raw["tadpole_only"]))}
    out["output"] = readout
    out["tadpole_only"] = {"n_mean_shift_C": matrices(raw["tadpole_only"], "C")[:depth],
                           "n_mean_shift_K": matrices(raw["tadpole_only"], "K")[:depth],
                           "n_mean_shift_output": readout["n_mean_shift_tadpole_only"]}
    out["noise_diagram_T"] = {"C": matrices(raw["T"], "C")[:depth],
                              "output": matrices(raw["T"], "out")[depth]}
    out["warnings"] = ["P >= 2: experimental path (product Gauss-Hermite moments, partials by "
                       "central differences; about 1e-5 relative for variances up to a few), "
                       "cost grows as (L P^2)^2"]
    from .activations import resolve

    if resolve(spec.activation).family.name == "leaky_relu":
        out["warnings"].append("kinked activation: Gauss-Hermite across the kink; measured "
                               "against the closed-form P = 1 path: variances about 1e-5, "
                               "mean shifts about 1e-3 relative")
    return out
