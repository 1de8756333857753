"""Finite-width (1/N) corrections of one network, P = 1 (docs/equations.md).

The fields of the action are laid out in causal order

    C^(1), K^(1), C^(2), K^(2), ..., C^(L), K^(L), C_out

where ``C^(l)`` averages ``sb2 + sw2 phi(h^(l-1))^2`` over the neurons, the
readout field ``C_out`` averages ``sb2_out + sw2_out phi(h^(L))^2``, and the
hidden kernel ``K^(l) = (1/N) sum_i h_i^(l) h_i^(l)`` (the empirical kernel the
simulator records) is one more field, averaging ``x^2`` at layer ``l``; no
field depends on the ``K^(l)``, so they only observe.

Given the fields, the per-neuron process is Gaussian with
``Var h^(s) = Sigma^(s) = gamma^2 Sigma^(s-1) + beta^2 C^(s)`` and
``Cov(h^(s), h^(t)) = gamma^|s-t| Sigma^(min(s,t))``. A field reading layer
``s`` with kernel function ``a + b g(h)`` has mean ``mu = a + b m_g(Sigma^(s))``
and the noise covariance of two fields is ``b b' (E[g g'] - m_g m_g')``; the
moments and their derivatives come from the generated module
``generated/nlo_<family>.py`` (:mod:`symfield.expansion` derives them). The
one-loop terms are assembled in the structured form that
:func:`symfield.expansion.derive_one_loop_structure` derives from the general
causal action:

    A = (I - R)^(-1),   V = A Q A^T,   N <dF> = A [(1/2) H : V + T],

with ``R``, ``H`` from ``mu`` and ``T_F = sum_{G,k} dQ_FG/dC^(k) A_{k,G}``.
The chain rule through ``Sigma`` is done per layer: ``dSigma^(s)/dC^(k) =
gamma^(2(s-k)) beta^2`` (``k <= s``), so ``H : V`` needs only
``N Var(Sigma^(s))`` and ``T`` only the response ``Omega = dSigma/d(noise)``,
which is propagated layer by layer with the layer Jacobian (no matrix
inverse); memory is O(L^2).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from .activations import BUILTIN, Activation, resolve
from .spec import NetworkSpec, SpecError, check_kernel, parse_kernel


class MomentProvider:
    """Gaussian moments of the kernel functions g in {phi^2, x^2} (P = 1).

    ``one_dim(kind, v)`` -> (m, dm/dv, d^2m/dv^2) of m(v) = E g(u), u ~ N(0, v);
    ``pair(kind_i, kind_j, va, vb, c)`` -> (M, dM/dva, dM/dvb, dM/dc) of
    M = E[g_i(x) g_j(y)], Var x = va, Var y = vb, Cov = c. Arrays elementwise.
    """

    def one_dim(self, kind: str, v: np.ndarray) -> tuple[np.ndarray, ...]:
        raise NotImplementedError

    def pair(self, kind_i: str, kind_j: str, va: np.ndarray, vb: np.ndarray,
             c: np.ndarray) -> tuple[np.ndarray, ...]:
        raise NotImplementedError


class GeneratedMoments(MomentProvider):
    """Moments from a generated ``nlo_<family>`` module."""

    def __init__(self, module: ModuleType, params: dict[str, float]):
        self.module = module
        self.params = tuple(params[name] for name in module.PARAMS)

    def one_dim(self, kind, v):
        return getattr(self.module, f"one_dim_{kind}")(np.asarray(v, dtype=float), *self.params)

    def pair(self, kind_i, kind_j, va, vb, c):
        return getattr(self.module, f"pair_{kind_i}_{kind_j}")(
            *(np.asarray(a, dtype=float) for a in (va, vb, c)), *self.params)


def load_nlo_module(activation: Activation) -> ModuleType:
    """The generated nlo module of the activation's family (built-in, or generated on demand
    into the cache directory for a user's expression, like symfield.kernel does)."""
    name = activation.family.name
    if name in BUILTIN:
        return importlib.import_module(f"generated.nlo_{name}")
    from .codegen.nlo import render_nlo_module
    from .kernel import _generator_digest, cached_module
    from .spec import DerivationSpec

    def render() -> str:
        spec = DerivationSpec(activations=(name,), options=(("expansion", "one loop, P = 1"),))
        return render_nlo_module(activation.family, source="symfield (on demand)",
                                 spec_hash=spec.spec_hash())

    return cached_module(f"nlo_{name}_{_generator_digest()}", render)




def moments_for(activation: str | Activation) -> GeneratedMoments:
    act = resolve(activation) if isinstance(activation, str) else activation
    return GeneratedMoments(load_nlo_module(act), act.param_values)


@dataclass(frozen=True)
class FieldLayout:
    """Fields in causal order: kind, the layer s they read, coefficient b, constant a."""

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    layer: np.ndarray
    coef: np.ndarray
    const: np.ndarray
    c_index: np.ndarray      # field index of C^(1..L)
    k_index: np.ndarray      # field index of K^(1..L) (empty without hidden fields)
    out_index: int


def layout(spec: NetworkSpec, hidden: bool = True) -> FieldLayout:
    names, kinds, layer, coef, const = [], [], [], [], []
    c_index, k_index = [], []
    for l in range(1, spec.depth + 1):
        c_index.append(len(names))
        names.append(f"C^({l})")
        kinds.append("phi2")
        layer.append(l - 1)
        coef.append(spec.sw2)
        const.append(spec.sb2)
        if hidden:
            k_index.append(len(names))
            names.append(f"K^({l})")
            kinds.append("x2")
            layer.append(l)
            coef.append(1.0)
            const.append(0.0)
    out = len(names)
    names.append("C_out")
    kinds.append("phi2")
    layer.append(spec.depth)
    coef.append(spec.sw2_out)
    const.append(spec.sb2_out)
    return FieldLayout(tuple(names), tuple(kinds), np.array(layer), np.array(coef),
                       np.array(const), np.array(c_index, dtype=int),
                       np.array(k_index, dtype=int), out)


@dataclass(frozen=True)
class OneLoop:
    """One-loop results for every field of :func:`layout` (all times N)."""

    fields: FieldLayout
    sigma: np.ndarray        # Sigma^(0..L) at the saddle
    mean: np.ndarray         # saddle value of each field
    V: np.ndarray            # N Cov(F, G)
    shift: np.ndarray        # N (E[F] - F*)
    tadpole_only: np.ndarray  # A (1/2) H : V, without T
    T: np.ndarray
    A: np.ndarray
    Q: np.ndarray
    Q_va: np.ndarray         # dQ_FG / d Var(input of F)


def _process(spec: NetworkSpec) -> tuple[float, float]:
    return (1.0, float(spec.rho)) if spec.net == "resnet" else (0.0, 1.0)


def one_loop(spec: NetworkSpec, K0: float, moments: MomentProvider, *,
             hidden: bool = True) -> OneLoop:
    """N Cov and N mean shift of every field (P = 1), float64."""
    gamma, beta = _process(spec)
    depth = spec.depth
    fl = layout(spec, hidden)
    n = len(fl.names)
    # saddle point: Sigma^(s) and the field means
    sigma = np.empty(depth + 1)
    sigma[0] = K0
    for s in range(1, depth + 1):
        m = moments.one_dim("phi2", sigma[s - 1:s])[0][0]
        sigma[s] = gamma**2 * sigma[s - 1] + beta**2 * (spec.sb2 + spec.sw2 * m)
    m0, m1, m2 = (np.empty(n) for _ in range(3))
    for kind in set(fl.kinds):
        sel = np.array([k == kind for k in fl.kinds])
        m0[sel], m1[sel], m2[sel] = moments.one_dim(kind, sigma[fl.layer[sel]])
    mean = fl.const + fl.coef * m0

    # The response A = (I - R)^(-1) by the layer recursion, no inverse: the noise of
    # field G moves Sigma^(s) by omega[s, G] (times 1/sqrt N), with
    #   omega[s] = J_s omega[s-1] + beta^2 e_{C^(s)},  J_s = gamma^2 + beta^2 sw2 m'(Sigma^(s-1))
    # (J_s is the layer Jacobian dSigma^(s)/dSigma^(s-1)), and a field reading layer s moves by
    #   A[F] = e_F + b_F m'_F(Sigma^(s)) omega[s].
    omega = np.zeros((depth + 1, n))
    c_m1 = moments.one_dim("phi2", sigma[:-1])[1]
    for s in range(1, depth + 1):
        omega[s] = (gamma**2 + beta**2 * spec.sw2 * c_m1[s - 1]) * omega[s - 1]
        omega[s, fl.c_index[s - 1]] += beta**2
    A = np.eye(n) + (fl.coef * m1)[:, None] * omega[fl.layer]

    # noise covariance and its partials, upper triangle evaluated, mirrored
    iu, ju = np.triu_indices(n)
    sa, sb = fl.layer[iu], fl.layer[ju]
    lag = np.abs(sa - sb)
    va, vb = sigma[sa], sigma[sb]
    cab = gamma**lag * sigma[np.minimum(sa, sb)]
    M = np.empty((4, iu.size))
    kinds = np.array(fl.kinds)
    for ki in sorted(set(fl.kinds)):
        for kj in sorted(set(fl.kinds)):
            sel = (kinds[iu] == ki) & (kinds[ju] == kj)
            if sel.any():
                M[:, sel] = moments.pair(ki, kj, va[sel], vb[sel], cab[sel])
    bb = fl.coef[iu] * fl.coef[ju]
    parts = {
        "Q": bb * (M[0] - m0[iu] * m0[ju]),
        "Q_va": bb * (M[1] - m1[iu] * m0[ju]),
        "Q_vb": bb * (M[2] - m0[iu] * m1[ju]),
        "Q_k": bb * M[3],
    }
    full = {}
    for name, values in parts.items():
        mat = np.zeros((n, n))
        mat[iu, ju] = values
        full[name] = mat
    Qm = full["Q"] + np.triu(full["Q"], 1).T
    # Q_va[F, G] = dQ/d Var(field F's input); mirrored entries swap va <-> vb
    Qva = full["Q_va"] + np.triu(full["Q_vb"], 1).T
    Qk = full["Q_k"] + np.triu(full["Q_k"], 1).T

    V = A @ Qm @ A.T
    var_sigma = np.einsum("sg,gh,sh->s", omega, Qm, omega)
    tad = 0.5 * fl.coef * m2 * var_sigma[fl.layer]
    lay = fl.layer
    own = omega[lay, np.arange(n)]               # response of each field's own input
    lags = np.abs(lay[:, None] - lay[None, :])
    low = np.minimum(lay[:, None], lay[None, :])
    T = (np.sum(Qva * omega[lay], axis=1) + Qva.T @ own
         + np.sum(Qk * gamma**lags * omega[low, np.arange(n)[None, :]], axis=1))
    return OneLoop(fl, sigma, mean, V, A @ (tad + T), A @ tad, T, A, Qm, Qva)


def check_p1_kernel(K0: object) -> float:
    kernel = parse_kernel(K0) if isinstance(K0, str) else check_kernel("K0", K0)
    if kernel.shape != (1, 1):
        raise SpecError("K0", kernel, "this path (the generated P = 1 code, and --dps) "
                                      "handles one input: pass a number")
    return float(kernel[0, 0])


# ------------------------------------------------------------------ the command


def _square(values: np.ndarray) -> list:
    """Per-layer scalars as a list of 1 x 1 matrices (the P x P layout of the output)."""
    return [[[float(v)]] for v in np.asarray(values, dtype=float)]


def payload(spec: NetworkSpec, K0: float, result: OneLoop) -> dict:
    """The JSON object of ``symfield nlo``: per layer l = 1..L, P x P matrices."""
    fl = result.fields
    c, k, out = fl.c_index, fl.k_index, fl.out_index
    shift, tad, V = result.shift, result.tadpole_only, result.V
    warnings = []
    for name in ("V", "shift"):
        if not np.all(np.isfinite(getattr(result, name))):
            warnings.append(f"non-finite one-loop terms ({name})")
    return {
        "C_star": _square(result.mean[c]),
        "n_var_C": _square(np.diag(V)[c]),
        "n_mean_shift_C": _square(shift[c]),
        "n_cov_C_layers": V[np.ix_(c, c)],
        "K_star": _square(result.mean[k]),
        "n_var_K": _square(np.diag(V)[k]),
        "n_mean_shift_K": _square(shift[k]),
        "n_cov_K_layers": V[np.ix_(k, k)],
        "output": {"K_out_star": [[float(result.mean[out])]],
                   "n_var": [[float(V[out, out])]],
                   "n_mean_shift": [[float(shift[out])]],
                   "n_mean_shift_tadpole_only": [[float(tad[out])]]},
        "tadpole_only": {"n_mean_shift_C": _square(tad[c]),
                         "n_mean_shift_K": _square(tad[k]),
                         "n_mean_shift_output": [[float(tad[out])]]},
        "noise_diagram_T": {"C": _square(result.T[c]), "output": [[float(result.T[out])]]},
        "warnings": warnings,
    }


def run(spec: NetworkSpec, K0: object) -> dict:
    """``symfield nlo``: validate, evaluate the one-loop terms, return the JSON object."""
    kernel = parse_kernel(K0) if isinstance(K0, str) else check_kernel("K0", K0)
    if kernel.shape[0] > 1:
        from .nlo_p2 import payload_p2

        resolve(spec.activation)
        return {"spec": spec.to_dict(), "K0": kernel,
                "method": "float64, experimental P >= 2 path (symfield.nlo_p2)",
                "convention": CONVENTION, **payload_p2(spec, kernel)}
    k0 = check_p1_kernel(K0)
    result = one_loop(spec, k0, moments_for(spec.activation))
    return {"spec": spec.to_dict(), "K0": [[k0]], "method": "float64 (generated nlo module)",
            "convention": CONVENTION, **payload(spec, k0, result)}


CONVENTION = ("N * (one-loop moment); K^(l) = (1/N) sum_i h_i^(l) h_i^(l), "
              "C^(l) = sb2 + (sw2/N) sum_i phi(h_i^(l-1)) phi(h_i^(l-1)), output = C_out")


def format_text(result: dict) -> str:
    lines = [f"{'layer':>5}  {'C*':>12}  {'N Var C':>12}  {'N dC':>12}  {'tadpole':>12}  "
             f"{'K*':>12}  {'N Var K':>12}  {'N dK':>12}"]
    rows = zip(result["C_star"], result["n_var_C"], result["n_mean_shift_C"],
               result["tadpole_only"]["n_mean_shift_C"], result["K_star"], result["n_var_K"],
               result["n_mean_shift_K"], strict=True)
    for l, row in enumerate(rows, start=1):
        lines.append(f"{l:>5}  " + "  ".join(f"{m[0][0]:12.6g}" for m in row))
    o = result["output"]
    lines.append(f"  out  {o['K_out_star'][0][0]:12.6g}  {o['n_var'][0][0]:12.6g}  "
                 f"{o['n_mean_shift'][0][0]:12.6g}  {o['n_mean_shift_tadpole_only'][0][0]:12.6g}")
    return "\n".join(lines)


def run_mp(spec: NetworkSpec, K0: object, dps: int) -> dict:
    """``symfield nlo --dps``: the same derived expressions on the mpmath path."""
    from .nlo_mp import run_mp as _run_mp

    return _run_mp(spec, K0, dps)


# ------------------------------------------------------------ Monte Carlo referee


@dataclass(frozen=True)
class Comparison:
    """Theory against Monte Carlo, one row per quantity (all in units of 1/N)."""

    labels: list[str]
    theory: np.ndarray
    estimate: np.ndarray
    stderr: np.ndarray
    width: int
    n_init: int

    @property
    def z(self) -> np.ndarray:
        return (self.estimate - self.theory) / self.stderr

    def table(self) -> str:
        rows = [f"{'quantity':<26} {'theory':>11} {'MC':>11} {'stderr':>9} {'z':>6}"]
        rows += [f"{lab:<26} {t:11.5f} {e:11.5f} {s:9.2e} {z:6.2f}" for lab, t, e, s, z in
                 zip(self.labels, self.theory, self.estimate, self.stderr, self.z,
                     strict=True)]
        return "\n".join(rows)


def field_samples(result: OneLoop, C_samples: np.ndarray, K_samples: np.ndarray) -> np.ndarray:
    """Monte Carlo samples in the field layout of ``result`` (P = 1): (n_init, n_fields)."""
    fl = result.fields
    depth = len(fl.c_index)
    out = np.empty((C_samples.shape[0], len(fl.names)))
    out[:, fl.c_index] = C_samples[:, :depth, 0, 0]
    if fl.k_index.size:
        out[:, fl.k_index] = K_samples[:, 1:, 0, 0]
    out[:, fl.out_index] = C_samples[:, depth, 0, 0]
    return out


def compare(result: OneLoop, samples: np.ndarray, width: int, *,
            pairs: bool = True, tadpole_only: bool = False) -> Comparison:
    """N Var, N Cov (across layers) and N (E - saddle) of every field against samples.

    Standard errors: of a mean, std / sqrt(n); of a (co)variance, the standard
    error of the mean of the centred products (x_i - xbar_i)(x_j - xbar_j)
    (delta method; the centring costs O(1/n)). ``tadpole_only`` compares the mean
    shift without the noise diagram T instead.
    """
    n = samples.shape[0]
    centred = samples - samples.mean(axis=0)
    labels, theory, estimate, stderr = [], [], [], []
    shift = result.tadpole_only if tadpole_only else result.shift
    tag = " (tadpole only)" if tadpole_only else ""
    for f, name in enumerate(result.fields.names):
        labels.append(f"N (E - *) {name}{tag}")
        theory.append(shift[f])
        estimate.append(width * (samples[:, f].mean() - result.mean[f]))
        stderr.append(width * samples[:, f].std(ddof=1) / np.sqrt(n))
    index = range(len(result.fields.names))
    chosen = [(f, g) for f in index for g in index if g >= f and (pairs or f == g)]
    for f, g in chosen:
        prod = centred[:, f] * centred[:, g]
        a, b = result.fields.names[f], result.fields.names[g]
        labels.append(f"N Var {a}" if f == g else f"N Cov {a},{b}")
        theory.append(result.V[f, g])
        estimate.append(width * prod.sum() / (n - 1))
        stderr.append(width * prod.std(ddof=1) / np.sqrt(n))
    return Comparison(labels, np.array(theory), np.array(estimate), np.array(stderr),
                      width, n)
