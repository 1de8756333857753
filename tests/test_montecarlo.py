"""Monte Carlo of finite-width networks against an independent infinite-width recursion.

The reference kernels below do not use any symfield derivation or generated
code: the pair expectations are closed forms from the literature, typed in
here and checked against mpmath quadrature, and the layer recursion is THEORY.md
section 3 written out in numpy.
"""

from __future__ import annotations

import math
import time
import zlib

import mpmath
import numpy as np
import pytest

from symfield import simulate as mc
from symfield.simulate import (
    MonteCarloResult,
    activation_function,
    format_table,
    simulate,
    zscores,
)
from symfield.spec import NetworkSpec, SpecError

K0 = np.array([[0.5, 0.3], [0.3, 0.8]])
SW2, SB2 = 1.25, 0.05
SW2_OUT, SB2_OUT = 1.5, 0.1
Z_MAX = 4.0

# Finite-width bias. The MC mean of K^(l) and K_out is off the infinite-width
# kernel by c/N + O(1/N^2). Measured with 10^5 initializations at N = 25 and 50
# (depth 3, the K0, sw2, sb2 above), |c| / s <= 0.34 for every entry, where
# s = sqrt(N Var(K_hat)) is the per-initialization spread; erf and ReLU, FFNet
# and ResNet with rho = 1 and 0.5. The largest ratios are for K_out, e.g. erf
# FFNet c = -0.16, s = 0.50; ReLU ResNet rho = 1 c = 3.8, s = 11.5. In units of
# the standard error the bias is (c / s) sqrt(n_init / N) <= 0.34 sqrt(400 / 500)
# = 0.30 for N = 500 and n_init = 400: well below the 4-sigma tolerance. The
# linear activation has no bias at all (the means follow the recursion exactly).
WIDTH, N_INIT = 500, 400


# ---------------------------------------------------------------- references


def g_erf(K: np.ndarray) -> np.ndarray:
    """E[erf(u_a) erf(u_b)], u ~ N(0, K): arcsine kernel (Williams 1997, "Computing with
    infinite networks", NIPS 9)."""
    d = 1.0 + 2.0 * np.diag(K)
    return (2.0 / np.pi) * np.arcsin(2.0 * K / np.sqrt(np.outer(d, d)))


def g_relu(K: np.ndarray) -> np.ndarray:
    """E[relu(u_a) relu(u_b)]: arc-cosine kernel of degree 1 (Cho & Saul 2009, "Kernel
    methods for deep learning", NIPS 22)."""
    s = np.sqrt(np.outer(np.diag(K), np.diag(K)))
    t = np.arccos(np.clip(K / s, -1.0, 1.0))
    return s / (2.0 * np.pi) * (np.sin(t) + (np.pi - t) * np.cos(t))


def g_linear(K: np.ndarray) -> np.ndarray:
    """E[u_a u_b] = K_ab."""
    return np.array(K, dtype=float)


PAIR = {"erf": g_erf, "relu": g_relu, "linear": g_linear}


def infinite_width(spec: NetworkSpec, K0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """K^(0..L) and K_out of the saddle-point recursion (THEORY.md section 3)."""
    pair = PAIR[spec.activation]
    kernels = [np.array(K0, dtype=float)]
    for _ in range(spec.depth):
        K = kernels[-1]
        C = spec.sb2 + spec.sw2 * pair(K)
        kernels.append(C if spec.net == "ffnet" else K + spec.rho**2 * C)
    return np.array(kernels), spec.sb2_out + spec.sw2_out * pair(kernels[-1])


def quadrature_pair(name: str, kaa: float, kbb: float, kab: float) -> float:
    """E[phi(u_a) phi(u_b)] by 1-D mpmath quadrature over u_a of phi(u_a) E[phi(u_b) | u_a]."""
    slope, var = kab / kaa, max(kbb - kab**2 / kaa, 0.0)  # u_b | u_a ~ N(slope u_a, var)

    def inner(ua: mpmath.mpf) -> mpmath.mpf:
        m = slope * ua
        if name == "erf":
            return mpmath.erf(m / mpmath.sqrt(1 + 2 * var))
        if var == 0.0:
            return max(m, 0)
        s = mpmath.sqrt(var)  # relu: E[max(v, 0)] for v ~ N(m, s^2)
        return m * mpmath.ncdf(m / s) + s * mpmath.npdf(m / s)

    def integrand(x: mpmath.mpf) -> mpmath.mpf:  # u_a = sqrt(kaa) x, x standard normal
        ua = mpmath.sqrt(kaa) * x
        phi_a = mpmath.erf(ua) if name == "erf" else max(ua, 0)
        return phi_a * inner(ua) * mpmath.npdf(x)

    intervals = [-mpmath.inf, 0, mpmath.inf] if name == "erf" else [0, mpmath.inf]
    with mpmath.workdps(20):
        return float(mpmath.quad(integrand, intervals))


def spec_for(net: str, activation: str, rho: float | None = None, depth: int = 3,
             **kwargs: float) -> NetworkSpec:
    return NetworkSpec(net, activation, SW2, SB2, depth, rho=rho, sw2_out=SW2_OUT,
                       sb2_out=SB2_OUT, **kwargs)


def check_against_theory(result: MonteCarloResult, spec: NetworkSpec,
                         K0: np.ndarray) -> float:
    """Print the tables, assert |z| <= Z_MAX for K^(l) and K_out; return max |z|."""
    K_theory, K_out_theory = infinite_width(spec, K0)
    print(f"\n{spec.net} {spec.activation} rho={spec.rho} N={result.width} "
          f"n_init={result.n_init} ({result.elapsed:.2f} s)")
    print(format_table(K_theory, result.K_mean, result.K_stderr, name="K"))
    print(format_table(K_out_theory, result.K_out_mean, result.K_out_stderr, name="K_out"))
    upper = np.triu_indices(K0.shape[0])
    z = np.concatenate([
        zscores(K_theory, result.K_mean, result.K_stderr)[:, upper[0], upper[1]].ravel(),
        zscores(K_out_theory, result.K_out_mean, result.K_out_stderr)[upper]])
    worst = float(np.max(np.abs(z)))
    print(f"max |z| = {worst:.2f}")
    assert worst <= Z_MAX
    # K_out is the mean of the readout field, the last entry of C
    np.testing.assert_array_equal(result.K_out_mean, result.C_mean[-1])
    return worst


# ------------------------------------------------------------- the references


@pytest.mark.parametrize("name", ["erf", "relu"])
def test_reference_closed_forms_match_quadrature(name: str) -> None:
    for kaa, kbb, kab in [(0.5, 0.8, 0.3), (1.3, 0.4, -0.5), (2.0, 2.0, 1.9)]:
        K = np.array([[kaa, kab], [kab, kbb]])
        closed = PAIR[name](K)
        assert closed[0, 1] == pytest.approx(quadrature_pair(name, kaa, kbb, kab), rel=1e-10)
        assert closed[0, 0] == pytest.approx(quadrature_pair(name, kaa, kaa, kaa), rel=1e-8)


# --------------------------------------------------------- leading order vs MC


@pytest.mark.parametrize(("net", "rho"), [("ffnet", None), ("resnet", 1.0), ("resnet", 0.5)])
@pytest.mark.parametrize("activation", ["erf", "relu", "linear"])
def test_leading_order_kernel(net: str, rho: float | None, activation: str) -> None:
    spec = spec_for(net, activation, rho)
    seed = zlib.crc32(f"{net} {rho} {activation}".encode())  # independent runs per case
    result = simulate(spec, K0, width=WIDTH, n_init=N_INIT, seed=seed)
    check_against_theory(result, spec, K0)


@pytest.mark.slow
@pytest.mark.parametrize(("net", "rho"), [("ffnet", None), ("resnet", 0.5)])
def test_leading_order_kernel_deep(net: str, rho: float | None) -> None:
    # Depth 10, erf: measured (4 x 10^4 initializations at N = 50 and 200) |c| / s <= 0.53,
    # so with N = n_init = 2000 the bias is <= 0.53 sqrt(2000 / 2000) ~ 0.5 standard errors.
    spec = spec_for(net, "erf", rho, depth=10)
    result = simulate(spec, K0, width=2000, n_init=2000, seed=7, progress=True)
    check_against_theory(result, spec, K0)


@pytest.mark.slow
def test_benchmark_size() -> None:
    """The size the brief asks to run in seconds: N = 500, L = 10, P = 2, 2000 nets."""
    spec = spec_for("resnet", "erf", 0.5, depth=10)
    start = time.perf_counter()
    result = simulate(spec, K0, width=500, n_init=2000, seed=3)
    elapsed = time.perf_counter() - start
    print(f"\nN=500 L=10 P=2 n_init=2000: {elapsed:.2f} s")
    assert result.K_mean.shape == (11, 2, 2)
    assert elapsed < 30.0


# ------------------------------------------------ the two samplers agree (finite N)


def _moments(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Means and all pair covariances of ``(n, L+1, P, P)`` samples (upper triangles),
    each with its standard error."""
    n, _, p, _ = samples.shape
    upper = np.triu_indices(p)
    flat = samples[:, :, upper[0], upper[1]].reshape(n, -1)
    dev = flat - flat.mean(axis=0)
    i, j = np.triu_indices(flat.shape[1])
    products = dev[:, i] * dev[:, j] * (n / (n - 1))
    values = np.concatenate([flat, products], axis=1)
    return values.mean(axis=0), values.std(axis=0, ddof=1) / math.sqrt(n)


@pytest.mark.parametrize(("net", "rho"), [("ffnet", None), ("resnet", 1.0)])
def test_kernel_sampler_matches_literal_weights(net: str, rho: float | None) -> None:
    # At N = 30 the 1/N effects (mean shift, N Cov(C) = O(1)) are large, so equal
    # means and covariances (across entries and layers) of the K^(l) and C^(l)
    # test that sampling h^(l) ~ N(0, C^(l)) is the same distribution as
    # multiplying out W^(l).
    spec = spec_for(net, "erf", rho)
    runs = [simulate(spec, K0, width=30, n_init=3000, seed=seed, keep_samples=True,
                     method=method) for seed, method in [(11, "kernel"), (12, "weights")]]
    worst = 0.0
    for field in ("K_samples", "C_samples", "Y_samples"):
        (ma, sa), (mb, sb) = (_moments(np.asarray(getattr(run, field)).reshape(3000, -1, 2, 2))
                              for run in runs)
        z = (ma - mb) / np.sqrt(sa**2 + sb**2)
        worst = max(worst, float(np.max(np.abs(z))))
        print(f"\n{net} {field}: {z.size} means and covariances, max |z| = "
              f"{np.max(np.abs(z)):.2f} (kernel vs weights sampler)")
    # the variances over initializations with their printed standard errors
    a, b = runs
    for name in ("K", "C", "Y"):
        z = ((getattr(a, f"{name}_var") - getattr(b, f"{name}_var"))
             / np.hypot(getattr(a, f"{name}_var_stderr"), getattr(b, f"{name}_var_stderr")))
        worst = max(worst, float(np.max(np.abs(z))))
        print(f"{net} {name}_var: max |z| = {np.max(np.abs(z)):.2f}")
    assert worst <= Z_MAX


@pytest.mark.parametrize("method", mc.METHODS)
def test_readout_unit_given_its_field(method: str) -> None:
    # y ~ N(0, C_out) given the last layer (literal W_out, b_out or sampled): by Isserlis
    # E[y_a y_b] = E[C_ab] and Var(y_a y_b) = E[C_aa C_bb + 2 C_ab^2] - E[C_ab]^2
    spec = spec_for("resnet", "erf", 1.0, depth=2)
    r = simulate(spec, K0, width=20, n_init=4000, seed=21, keep_samples=True, method=method)
    c = np.asarray(r.C_samples)[:, -1]
    diag = np.diagonal(c, axis1=-2, axis2=-1)
    wick = (diag[:, :, None] * diag[:, None, :] + 2 * c**2).mean(0) - c.mean(0) ** 2
    z_mean = (r.Y_mean - r.K_out_mean) / r.Y_stderr
    z_var = (r.Y_var - wick) / r.Y_var_stderr
    print(f"\n{method}: max |z| mean {np.max(np.abs(z_mean)):.2f}, "
          f"var {np.max(np.abs(z_var)):.2f}")
    assert np.max(np.abs(z_mean)) < Z_MAX and np.max(np.abs(z_var)) < Z_MAX
    assert np.asarray(r.Y_samples).shape == (4000, 2, 2)


# --------------------------------------------------------- bookkeeping and API


def test_shapes_and_sample_statistics() -> None:
    K0_3 = np.array([[1.0, 0.2, -0.1], [0.2, 0.7, 0.0], [-0.1, 0.0, 0.4]])
    spec = spec_for("resnet", "tanh", 0.3, depth=4)
    result = simulate(spec, K0_3, width=20, n_init=37, seed=1, batch=5, keep_samples=True)
    assert result.K_mean.shape == result.K_stderr.shape == (5, 3, 3)
    assert result.C_mean.shape == result.C_stderr.shape == (5, 3, 3)
    assert result.K_out_mean.shape == result.K_out_stderr.shape == (3, 3)
    assert result.C_samples is not None and result.K_samples is not None
    assert result.C_samples.shape == result.K_samples.shape == (37, 5, 3, 3)
    assert (result.width, result.n_init, result.seed, result.depth) == (20, 37, 1, 4)
    assert result.field_labels() == ["C^(1)", "C^(2)", "C^(3)", "C^(4)", "C_out"]
    # batch-wise merged moments equal the statistics of the kept samples
    for mean, stderr, samples in [(result.K_mean, result.K_stderr, result.K_samples),
                                  (result.C_mean, result.C_stderr, result.C_samples)]:
        np.testing.assert_allclose(mean, samples.mean(0), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(stderr, samples.std(0, ddof=1) / math.sqrt(37),
                                   rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(samples, np.swapaxes(samples, -1, -2), atol=0)
    without = simulate(spec, K0_3, width=20, n_init=37, seed=1)
    assert without.C_samples is None and without.K_samples is None


def test_single_input_and_depth_one() -> None:
    spec = NetworkSpec("ffnet", "relu", 2.0, 0.0, 1)
    result = simulate(spec, 0.7, width=50, n_init=10, seed=0)
    assert result.K_mean.shape == (2, 1, 1) and result.C_mean.shape == (2, 1, 1)


@pytest.mark.parametrize("method", mc.METHODS)
def test_reproducible_and_independent_of_batch(method: str) -> None:
    spec = spec_for("ffnet", "erf")
    kwargs = dict(width=16, n_init=24, keep_samples=True, method=method)
    first = simulate(spec, K0, seed=5, batch=24, **kwargs)
    again = simulate(spec, K0, seed=5, batch=24, **kwargs)
    rebatched = simulate(spec, K0, seed=5, batch=7, chunk=3, **kwargs)
    other = simulate(spec, K0, seed=6, batch=24, **kwargs)
    np.testing.assert_array_equal(first.C_samples, again.C_samples)
    np.testing.assert_array_equal(first.K_mean, again.K_mean)
    # bitwise: per-initialization streams and statistics merged in a fixed block order
    for name in ("C_samples", "K_samples", "Y_samples", "K_mean", "K_stderr", "C_var",
                 "C_var_stderr", "Y_mean", "Y_var_stderr"):
        np.testing.assert_array_equal(getattr(first, name), getattr(rebatched, name))
    assert not np.allclose(first.K_mean[1:], other.K_mean[1:])
    # the first k initializations do not depend on n_init
    longer = simulate(spec, K0, seed=5, **{**kwargs, "n_init": 40})
    assert longer.C_samples is not None and first.C_samples is not None
    np.testing.assert_array_equal(longer.C_samples[:24], first.C_samples)


def test_statistics_independent_of_chunking_across_blocks(monkeypatch) -> None:
    # small statistics blocks so that chunks and batches cut across many of them
    monkeypatch.setattr(mc, "_STAT_BLOCK", 4)
    spec = spec_for("resnet", "erf", 0.5, depth=2)
    runs = [simulate(spec, K0, width=8, n_init=45, seed=2, batch=b, chunk=c)
            for b, c in [(45, None), (1, 1), (3, 10), (7, 4), (5, 45)]]
    assert runs[0].stat_block == 4 and runs[0].chunks == 1 and runs[1].chunks == 12
    for run in runs[1:]:
        for name in ("K_mean", "K_stderr", "K_var", "K_var_stderr", "C_mean", "C_var",
                     "K_out_var_stderr", "Y_mean", "Y_var", "Y_var_stderr"):
            np.testing.assert_array_equal(getattr(runs[0], name), getattr(run, name))


def test_moments_merge_and_variance_stderr() -> None:
    rng = np.random.default_rng(0)
    data = rng.gamma(2.0, size=(103, 3)) + rng.standard_normal((103, 3))
    merged = mc.Moments.of(data[:10])
    for lo, hi in [(10, 11), (11, 60), (60, 103)]:
        merged = merged.merge(mc.Moments.of(data[lo:hi]))
    direct = data - data.mean(0)
    assert merged.count == 103
    np.testing.assert_allclose(merged.mean, data.mean(0), rtol=1e-13)
    for power, value in [(2, merged.m2), (3, merged.m3), (4, merged.m4)]:
        np.testing.assert_allclose(value, (direct**power).sum(0), rtol=1e-11)
    np.testing.assert_allclose(merged.variance(), data.var(0, ddof=1), rtol=1e-13)
    # the standard error of s^2 against the spread of s^2 over 2000 Gaussian samples of
    # size 50: Var(s^2) = 2 sigma^4 / (n - 1) for normal data
    samples = 1.5 * rng.standard_normal((2000, 50))
    stats = [mc.Moments.of(row[:, None]) for row in samples]
    reported = np.array([s.variance_stderr()[0] for s in stats])
    spread = np.std([s.variance()[0] for s in stats])
    assert spread == pytest.approx(1.5**2 * math.sqrt(2 / 49), rel=0.05)
    assert np.sqrt(np.mean(reported**2)) == pytest.approx(spread, rel=0.1)


def test_variance_against_replicas() -> None:
    # the reported variance of C^(l) and its standard error against independent replicas
    spec = spec_for("resnet", "erf", 1.0, depth=2)
    runs = [simulate(spec, K0, width=6, n_init=60, seed=100 + k) for k in range(40)]
    var = np.array([r.C_var for r in runs])
    reported = np.array([r.C_var_stderr for r in runs])
    ratio = var.std(0, ddof=1) / np.sqrt((reported**2).mean(0))
    print(f"\nspread of C_var over replicas / reported stderr: "
          f"{ratio.min():.2f}..{ratio.max():.2f}")
    assert np.all((ratio > 0.6) & (ratio < 1.5))
    pooled = var.mean(0)
    combined = simulate(spec, K0, width=6, n_init=2400, seed=99)
    z = (combined.C_var - pooled) / np.sqrt(combined.C_var_stderr**2 + var.var(0) / 40)
    assert np.max(np.abs(z)) < Z_MAX


def test_progress_output(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setattr(mc, "PROGRESS_DELAY", 0.0)
    simulate(spec_for("resnet", "gelu", 0.5), K0, width=10, n_init=40, seed=0, progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert 5 <= len(lines) <= 11
    assert "40/40 initializations" in lines[-1] and "100%" in lines[-1]
    assert "left" in lines[0] and "[" in lines[0]
    # short runs stay quiet with the default delay
    monkeypatch.setattr(mc, "PROGRESS_DELAY", 60.0)
    simulate(spec_for("resnet", "gelu", 0.5), K0, width=10, n_init=40, seed=0, progress=True)
    assert capsys.readouterr().err == ""


def test_memory_refused_before_start(monkeypatch) -> None:
    spec = spec_for("ffnet", "erf")
    need = mc.memory_estimate("weights", 3000, 3, 2, 10, 10, False)
    assert need > 8 * 10 * 3000**2  # the weight matrices of a batch
    monkeypatch.setattr(mc, "available_memory", lambda: need - 1)
    calls = []
    monkeypatch.setattr(mc, "_run_chunk", lambda *a, **k: calls.append(a))
    with pytest.raises(SpecError, match="memory"):
        simulate(spec, K0, width=3000, n_init=10, seed=0, batch=10, method="weights")
    assert not calls
    kept = mc.memory_estimate("kernel", 10, 3, 2, 10**6, 10, True)
    assert kept >= 8 * 2 * 10**6 * 4 * 4


def test_bad_arguments() -> None:
    spec = spec_for("ffnet", "erf")
    with pytest.raises(SpecError, match="width"):
        simulate(spec, K0, width=0, n_init=10, seed=0)
    with pytest.raises(SpecError, match="n_init"):
        simulate(spec, K0, width=10, n_init=1, seed=0)
    with pytest.raises(SpecError, match="seed"):
        simulate(spec, K0, width=10, n_init=10, seed=-1)
    with pytest.raises(SpecError, match="method"):
        simulate(spec, K0, width=10, n_init=10, seed=0, method="exact")
    with pytest.raises(SpecError, match="K0"):
        simulate(spec, [[1.0, 2.0], [2.0, 1.0]], width=10, n_init=10, seed=0)
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="non-finite"):
        simulate(NetworkSpec("ffnet", "expr:log(x)", 1.0, 0.0, 2), K0, width=10,
                 n_init=4, seed=0)


# ------------------------------------------------------------ activations, z, tables


def test_activation_functions() -> None:
    x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    np.testing.assert_allclose(activation_function("relu")(x), np.maximum(x, 0.0))
    np.testing.assert_allclose(activation_function("abs")(x), np.abs(x))
    np.testing.assert_allclose(activation_function("linear")(x), x)
    np.testing.assert_allclose(activation_function("leaky_relu:0.1")(x),
                               np.where(x > 0, x, 0.1 * x))
    np.testing.assert_allclose(activation_function("erf")(x), [math.erf(v) for v in x],
                               rtol=1e-14)
    np.testing.assert_allclose(activation_function("tanh")(x), np.tanh(x))
    np.testing.assert_allclose(activation_function("gelu")(x),
                               [v * (1 + math.erf(v / math.sqrt(2))) / 2 for v in x],
                               rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(activation_function("silu")(x), x / (1 + np.exp(-x)))
    np.testing.assert_allclose(activation_function("expr:x*exp(-x**2)")(x), x * np.exp(-x**2))
    constant = activation_function("expr:1 + 0*x")(x.reshape(5, 1))
    assert constant.shape == (5, 1) and np.all(constant == 1.0)
    np.testing.assert_allclose(mc._erf_fallback(x), [math.erf(v) for v in x], rtol=0)


def test_zscores_and_table() -> None:
    z = zscores(np.array([1.0, 1.0, 1.0, 2.0]), np.array([1.2, 1.0, 1.5, 1.0]),
                np.array([0.1, 0.0, 0.0, 0.5]))
    np.testing.assert_allclose(z, [2.0, 0.0, np.inf, -2.0])
    theory = np.stack([K0, 2 * K0])
    table = format_table(theory, theory + 0.01, np.full_like(theory, 0.01), name="K")
    lines = table.splitlines()
    assert lines[0].split() == ["entry", "theory", "MC", "mean", "stderr", "z"]
    assert len(lines) == 1 + 2 * 3  # upper triangles of two 2 x 2 kernels
    assert lines[2].startswith("K[0][0,1]") and lines[2].split()[-1] == "1.00"
    single = format_table(K0, K0, np.ones_like(K0), name="K_out")
    assert single.splitlines()[1].startswith("K_out[0,0]")
