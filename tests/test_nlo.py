"""The one-loop (1/N) terms against Monte Carlo of finite-width nets, exact identities, CLI.

Referees: the kernel-space sampler of symfield.simulate (exact at any width,
itself checked against the literal weight sampler in test_montecarlo.py), and
identities that hold exactly at any width:

* ResNet: E[K_hat^(l)] = K0 + rho^2 sum_{k <= l} E[C^(k)] (the increments have
  mean zero given the past), so N dK^(l) = rho^2 sum_k N dC^(k);
* FFNet: h^(l) ~ N(0, C^(l)) given C^(l), so E K_hat = E C and
  N Var K_hat^(l) = N Var C^(l) + 2 C*^2 + O(1/N).

Standard errors of (co)variances are those of the mean of centred products
(delta method), see symfield.nlo.compare.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from symfield.nlo import compare, field_samples, moments_for, one_loop
from symfield.simulate import simulate
from symfield.spec import NetworkSpec

Z_MAX = 3.0
#: The slow grid tests about 600 correlated z-scores: 4 sigma is the family-wise 5 % level.
Z_GRID = 4.0
K0 = 0.8


def _spec(net: str, activation: str, depth: int) -> NetworkSpec:
    sw2 = 1.25 if activation == "erf" else 2.0
    return NetworkSpec(net=net, activation=activation, sw2=sw2, sb2=0.05, depth=depth,
                       rho=0.6 if net == "resnet" else None, sw2_out=1.5, sb2_out=0.1)


def _run(net, activation, depth, width, n_init, seed, *, pairs=True):
    spec = _spec(net, activation, depth)
    theory = one_loop(spec, K0, moments_for(activation))
    mc = simulate(spec, np.array([[K0]]), width, n_init, seed, keep_samples=True)
    samples = field_samples(theory, mc.C_samples, mc.K_samples)
    return theory, samples


# ------------------------------------------------------------------ identities


@pytest.mark.parametrize("activation", ["erf", "relu", "tanh"])
def test_resnet_hidden_kernel_mean_shift_is_the_sum_of_field_shifts(activation):
    spec = _spec("resnet", activation, 6)
    r = one_loop(spec, K0, moments_for(activation))
    c_shift = r.shift[r.fields.c_index]
    k_shift = r.shift[r.fields.k_index]
    np.testing.assert_allclose(k_shift, spec.rho**2 * np.cumsum(c_shift), rtol=1e-10,
                               atol=1e-12)
    assert np.all(np.abs(r.T[r.fields.c_index][1:]) > 0)


@pytest.mark.parametrize("activation", ["erf", "relu"])
def test_ffnet_identities_and_vanishing_noise_diagram(activation):
    spec = _spec("ffnet", activation, 5)
    r = one_loop(spec, K0, moments_for(activation))
    c, k = r.fields.c_index, r.fields.k_index
    np.testing.assert_allclose(r.shift[k], r.shift[c], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.diag(r.V)[k], np.diag(r.V)[c] + 2 * r.mean[c] ** 2,
                               rtol=1e-10)
    np.testing.assert_allclose(r.T, 0.0, atol=1e-12)
    np.testing.assert_allclose(r.shift, r.tadpole_only, rtol=1e-12, atol=1e-14)
    if activation == "relu":  # homogeneous: E C^(l) is exact at any width
        np.testing.assert_allclose(r.shift, 0.0, atol=1e-12)


def test_saddle_point_is_the_spine_kernel():
    from symfield.kernel import compute

    for net in ("ffnet", "resnet"):
        spec = _spec(net, "erf", 7)
        r = one_loop(spec, K0, moments_for("erf"))
        spine = compute(spec, np.array([[K0]]), layers=True)
        np.testing.assert_allclose(r.sigma, np.array(spine["K_layers"])[:, 0, 0], rtol=1e-12)
        assert r.mean[r.fields.out_index] == pytest.approx(spine["K_out"][0][0], rel=1e-12)


# ------------------------------------------------------------------ Monte Carlo


def test_resnet_erf_mean_shift_against_monte_carlo_and_the_tadpole_miss():
    """Cheap default (about a second): L = 3, N = 50, 30000 nets; mean shifts only."""
    theory, samples = _run("resnet", "erf", 3, 50, 30000, seed=2024, pairs=False)
    full = compare(theory, samples, 50, pairs=False)
    means = [i for i, lab in enumerate(full.labels) if lab.startswith("N (E")]
    assert np.all(np.abs(full.z[means]) < Z_MAX), full.table()
    # without the noise diagram the mean shift of the last layers is rejected
    tad = compare(theory, samples, 50, pairs=False, tadpole_only=True)
    last = [i for i, lab in enumerate(tad.labels)
            if lab.startswith("N (E") and ("C^(3)" in lab or "C_out" in lab)]
    assert np.all(tad.z[last] < -4), tad.table()
    ratio = theory.shift[theory.fields.out_index] / theory.tadpole_only[theory.fields.out_index]
    assert ratio > 5
    # most of T is the equal-time contraction A_kk = 1 (k = m in T_l = sum dQ_lm/dC_k A_km):
    # dQ_{F, C^(k)}/dC^(k) = dQ/dVar(input of F) rho^2 for k <= layer(F). Without it (as in a
    # continuous-time convention with theta(0) = 0) the shift is rejected as well.
    fl = theory.fields
    equal_time = np.array([sum(theory.Q_va[f, fl.c_index[k - 1]] * 0.6**2
                               for k in range(1, fl.layer[f] + 1)) for f in range(len(fl.names))])
    without = theory.shift - theory.A @ equal_time
    for f in (fl.c_index[2], fl.out_index):
        row = full.labels.index(f"N (E - *) {fl.names[f]}")
        z = (full.estimate[row] - without[f]) / full.stderr[row]
        assert z < -4, (fl.names[f], z, without[f], full.estimate[row])


def test_resnet_erf_covariances_against_monte_carlo():
    """N = 200, 20000 nets: variances, cross-layer covariances, output kernel, means.

    (At N = 50 and 30000 nets the O(1/N^2) terms of the variances, about +2 %,
    already reach 2-3 standard errors: see test_one_loop_grid_against_monte_carlo.)
    """
    theory, samples = _run("resnet", "erf", 3, 200, 20000, seed=7)
    full = compare(theory, samples, 200)
    assert np.all(np.abs(full.z) < Z_MAX), full.table()


def test_ffnet_relu_against_monte_carlo():
    """Cheap: one hidden layer. (ReLU FFNets carry large two-loop terms: at L = 2 the
    variances sit above one loop by about 5/N relative; the slow tests fit them.)"""
    theory, samples = _run("ffnet", "relu", 1, 200, 10000, seed=99)
    full = compare(theory, samples, 200)
    assert np.all(np.abs(full.z) < Z_MAX), full.table()


@pytest.mark.parametrize("activation", ["leaky_relu:0.3", "abs"])
def test_leaky_relu_family_polar_moments_against_monte_carlo(activation):
    """The polar closed forms with a negative-side slope (phi^2 = x^2 (H(x) + a^2 H(-x)))."""
    theory, samples = _run("resnet", activation, 2, 300, 20000, seed=3)
    full = compare(theory, samples, 300)
    assert np.all(np.abs(full.z) < Z_MAX), full.table()


def test_resnet_tanh_quadrature_against_monte_carlo():
    """tanh: every phi^2 x phi^2 moment by the generated 2-D quadrature."""
    theory, samples = _run("resnet", "tanh", 3, 200, 20000, seed=5)
    full = compare(theory, samples, 200)
    assert np.all(np.abs(full.z) < Z_MAX), full.table()


def test_user_expression_generated_on_demand_against_monte_carlo(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMFIELD_CACHE", str(tmp_path))
    theory, samples = _run("resnet", "expr:x*exp(-x**2/4)", 2, 200, 20000, seed=17)
    full = compare(theory, samples, 200)
    assert np.all(np.abs(full.z) < Z_MAX), full.table()
    assert list(tmp_path.glob("generated/nlo_user_*.py"))


GRID = [(net, act, width) for net in ("ffnet", "resnet") for act in ("erf", "relu")
        for width in (50, 100, 200, 500)]


@pytest.mark.slow
@pytest.mark.parametrize("net,activation,width", GRID)
def test_one_loop_grid_against_monte_carlo(net, activation, width):
    theory, samples = _run(net, activation, 3, width, 5000, seed=width)
    full = compare(theory, samples, width)
    print(f"\n{net} {activation} N={width}\n{full.table()}")
    assert np.all(np.abs(full.z) < Z_GRID), full.table()


@pytest.mark.slow
def test_mean_shift_slope_in_one_over_n():
    """E[C] - C* = a/N + b/N^2 over the widths: the fitted a is the one-loop shift."""
    widths = np.array([10, 20, 40, 80, 160])
    theory = None
    rows, errs = [], []
    for width in widths:
        theory, samples = _run("resnet", "erf", 3, int(width), 200000, seed=int(width),
                               pairs=False)
        rows.append(samples.mean(axis=0) - theory.mean)
        errs.append(samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0]))
    rows, errs = np.array(rows), np.array(errs)
    design = np.stack([1 / widths, 1 / widths**2], axis=1)
    for f in list(theory.fields.c_index[1:]) + [theory.fields.out_index]:
        w = 1 / errs[:, f]
        coef, *_ = np.linalg.lstsq(design * w[:, None], rows[:, f] * w, rcond=None)
        cov = np.linalg.inv((design * w[:, None]).T @ (design * w[:, None]))
        z = (coef[0] - theory.shift[f]) / np.sqrt(cov[0, 0])
        print(f"{theory.fields.names[f]}: slope {coef[0]:.4f} +- {np.sqrt(cov[0, 0]):.4f}, "
              f"one loop {theory.shift[f]:.4f}, tadpole only {theory.tadpole_only[f]:.4f}")
        assert abs(z) < Z_MAX
        # and the tadpole-only slope is excluded
        assert abs(coef[0] - theory.tadpole_only[f]) / np.sqrt(cov[0, 0]) > Z_MAX


# ------------------------------------------------------------------ CLI


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "symfield.cli", "nlo", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_json():
    out = _cli("--net", "resnet", "--activation", "erf", "--sw2", "1.25", "--sb2", "0.05",
               "--rho", "0.6", "--depth", "8", "--K0", "0.8", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for key in ("C_star", "n_var_C", "n_mean_shift_C", "K_star", "n_var_K", "n_mean_shift_K"):
        assert np.array(data[key]).shape == (8, 1, 1), key
    assert np.array(data["n_cov_C_layers"]).shape == (8, 8)
    assert set(data["output"]) >= {"K_out_star", "n_var", "n_mean_shift"}
    assert np.array(data["tadpole_only"]["n_mean_shift_C"]).shape == (8, 1, 1)
    cov = np.array(data["n_cov_C_layers"])
    np.testing.assert_allclose(np.diag(cov), np.array(data["n_var_C"])[:, 0, 0])


@pytest.mark.parametrize("args", [["--depth", "0"], ["--rho", "-0.1"],
                                  ["--activation", "nope"], ["--K0", "0.05,0.09;0.09,0.05"],
                                  ["--net", "ffnet", "--rho", "0.5"], ["--sw2", "nan"]])
def test_cli_errors(args):
    base = ["--rho", "0.6"] if "--rho" not in args and "ffnet" not in args else []
    out = _cli(*base, *args, "--json")
    assert out.returncode == 2
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("net", ["ffnet", "resnet"])
def test_variance_intercept_in_one_over_n(net):
    """N Var = V + b/N over the widths: ReLU's two-loop terms are large (b/V ~ 5 at L = 2),
    the intercept is still the one-loop V."""
    widths = np.array([25, 50, 100, 200, 400])
    estimates, errors, theory = [], [], None
    for width in widths:
        theory, samples = _run(net, "relu", 3, int(width), 40000, seed=int(width),
                               pairs=False)
        cmp = compare(theory, samples, int(width), pairs=False)
        var = [i for i, lab in enumerate(cmp.labels) if lab.startswith("N Var")]
        estimates.append(cmp.estimate[var])
        errors.append(cmp.stderr[var])
    estimates, errors = np.array(estimates), np.array(errors)
    design = np.stack([np.ones(len(widths)), 1 / widths], axis=1)
    V = np.diag(theory.V)
    for f, name in enumerate(theory.fields.names):
        w = 1 / errors[:, f]
        coef, *_ = np.linalg.lstsq(design * w[:, None], estimates[:, f] * w, rcond=None)
        cov = np.linalg.inv((design * w[:, None]).T @ (design * w[:, None]))
        z = (coef[0] - V[f]) / np.sqrt(cov[0, 0])
        print(f"{net} {name}: intercept {coef[0]:.4f} +- {np.sqrt(cov[0, 0]):.4f}, one loop "
              f"{V[f]:.4f}, two-loop slope b = {coef[1]:.2f}")
        assert abs(z) < Z_MAX


# ------------------------------------------------------------------ two inputs


def _p2(net, depth, width, n_init, seed):
    from symfield.nlo_p2 import as_result, run_p2
    from symfield.nlo_p2 import field_samples as p2_samples

    spec = _spec(net, "erf", depth)
    K0_2 = np.array([[0.8, 0.3], [0.3, 0.5]])
    raw = run_p2(spec, K0_2)
    result = as_result(raw)
    mc = simulate(spec, K0_2, width, n_init, seed, keep_samples=True)
    return spec, raw, result, p2_samples(result, mc.C_samples, mc.K_samples)


def _check_p2(net, depth, width, n_init, seed):
    spec, raw, result, samples = _p2(net, depth, width, n_init, seed)
    # the (1,1) entries form the P = 1 problem of input 1: the generated P = 1 path agrees
    p1 = one_loop(spec, 0.8, moments_for("erf"))
    idx = [i for i, F in enumerate(raw["fields"]) if F.pair == (0, 0)]
    np.testing.assert_allclose(raw["V"][np.ix_(idx, idx)], p1.V, rtol=3e-5, atol=1e-9)
    np.testing.assert_allclose(raw["shift"][idx], p1.shift, rtol=3e-5, atol=1e-6)
    # all entries (off-diagonal kernels included) against Monte Carlo
    full = compare(result, samples, width)
    assert np.all(np.abs(full.z) < Z_MAX), full.table()


def test_two_inputs_resnet_against_p1_and_monte_carlo():
    _check_p2("resnet", 2, 200, 10000, seed=11)


@pytest.mark.slow
@pytest.mark.parametrize("net", ["ffnet", "resnet"])
def test_two_inputs_against_monte_carlo_slow(net):
    _check_p2(net, 3, 100, 20000, seed=23)


def test_cli_two_inputs():
    out = _cli("--activation", "erf", "--rho", "0.6", "--depth", "2", "--K0", "0.8,0.3;0.3,0.5",
               "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert np.array(data["n_var_C"]).shape == (2, 2, 2)
    assert np.array(data["output"]["n_mean_shift"]).shape == (2, 2)


# ------------------------------------------------------------------ mpmath path


@pytest.mark.parametrize("net,activation", [("resnet", "relu"), ("ffnet", "leaky_relu:0.1")])
def test_mpmath_path_agrees_with_float64(net, activation):
    from symfield.nlo import run
    from symfield.nlo_mp import run_mp

    spec = _spec(net, activation, 3)
    exact = run_mp(spec, "0.8", 30)
    assert exact["method"] == "mpmath (30 digits)"
    fast = run(spec, "0.8")
    for key in ("n_var_C", "n_mean_shift_C", "n_var_K", "n_mean_shift_K", "n_cov_C_layers"):
        a, b = np.array(exact[key], dtype=float), np.array(fast[key], dtype=float)
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-13 * (1 + np.max(np.abs(a))),
                                   err_msg=key)
    assert len(exact["n_var_C"][-1][0][0].replace("-", "").replace(".", "")) >= 30


def test_mpmath_path_refuses_quadrature_families():
    out = _cli("--activation", "erf", "--rho", "0.6", "--depth", "2", "--dps", "30")
    assert out.returncode == 2 and "dps" in out.stderr
