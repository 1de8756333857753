"""Optimal residual scaling: derivative code, roots, uniqueness, continuum approach, CLI."""

import json
import math

import mpmath
import numpy as np
import pytest

from generated import erf, leaky_relu
from symfield.cli import main
from symfield.optimal import optimal_rho, optimal_rho_map, refine_mp

K0 = np.array([[0.05, 0.03], [0.03, 0.05]])
DEPTHS = [10, 50, 100, 200]


@pytest.mark.parametrize("module, params", [(erf, {}), (leaky_relu, {"alpha": 0.1})])
def test_drho_code_matches_central_differences(module, params):
    """The generated forward-mode derivative against a central difference (referee)."""
    rho, h = 0.37, 1e-6
    d = module.resnet_drho(K0, rho=rho, sw2=1.25, sb2=0.05, depth=40, **params)
    up = module.resnet(K0, rho=rho + h, sw2=1.25, sb2=0.05, depth=40, **params)
    down = module.resnet(K0, rho=rho - h, sw2=1.25, sb2=0.05, depth=40, **params)
    for key, fd_key in (("dlog_chi_out_drho", "log_abs_chi_out"), ("dK_drho", "K")):
        fd = (up[fd_key] - down[fd_key]) / (2 * h)
        np.testing.assert_allclose(d[key], fd, rtol=1e-7, atol=1e-8)


def test_erf_optima_unique_maxima_and_one_over_sqrt_depth():
    result = optimal_rho("erf", 1.25, 0.05, K0, DEPTHS)
    for entry in ((0, 0), (0, 1)):
        optima = result.optima[entry]
        assert all(o.rho_star is not None and o.second_derivative < 0 for o in optima)
        # rho* decreases with depth and the fitted exponent is close to -1/2
        stars = [o.rho_star for o in optima]
        assert all(a > b for a, b in zip(stars, stars[1:], strict=False))
        assert -0.62 < result.exponent(entry) < -0.48
    # rho* sqrt(L) approaches the continuum value sqrt(t*) = 0.96594438... (THEORY.md)
    scaled = [o.rho_star * math.sqrt(o.depth) for o in result.optima[(0, 0)]]
    gaps = [abs(s - 0.96594438) for s in scaled]
    assert all(a > b for a, b in zip(gaps, gaps[1:], strict=False))
    assert gaps[-1] / 0.96594438 < 0.005


def test_float64_optimum_agrees_with_mpmath_root():
    """rho* from the generated derivative vs a root on the mpmath path at 30 digits."""
    result = optimal_rho("erf", 1.25, 0.05, K0, [10])
    for entry in ((0, 0), (0, 1)):
        optimum = result.optima[entry][0]
        root, value = refine_mp("erf", 1.25, 0.05, K0, 10, entry, optimum.rho_star, 30)
        assert abs(optimum.rho_star - float(root)) / float(root) < 1e-9
        assert abs(optimum.chi_out_max - float(value)) / float(value) < 1e-12
        # and the mp root really is stationary to many digits
        assert mpmath.mpf(root) > 0


def test_relu_has_no_interior_maximum():
    result = optimal_rho("relu", 2.0, 0.1, K0, [10, 50])
    for entry in ((0, 0), (0, 1)):
        for optimum in result.optima[entry]:
            assert optimum.rho_star is None
            assert "no interior maximum" in optimum.reason


def test_map_is_the_same_as_single_searches():
    sw2, sb2 = np.array([0.9, 1.25, 2.0]), np.array([0.0, 0.05, 0.3])
    optima = optimal_rho_map("erf", sw2, sb2, K0, 50, [(0, 0), (0, 1)])
    for h in range(3):
        single = optimal_rho("erf", sw2[h], sb2[h], K0, [50])
        for entry in ((0, 0), (0, 1)):
            a, b = optima[h][entry].rho_star, single.optima[entry][0].rho_star
            assert (a is None and b is None) or abs(a - b) <= 1e-12 * b


def test_cli_optimal_rho_json(capsys):
    argv = ["optimal-rho", "--activation", "erf", "--sw2", "1.25", "--sb2", "0.05",
            "--K0", "0.05,0.03;0.03,0.05", "--depths", "10,50,100,200", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("depths", "rho_star_diagonal", "rho_star_offdiagonal", "chi_out_max_diagonal",
                "chi_out_max_offdiagonal", "exponent_diagonal", "exponent_offdiagonal",
                "continuum", "rho_star_continuum", "continuum_relative_gap"):
        assert key in out, key
    assert abs(out["continuum"]["diagonal"]["sqrt_tstar"] - 0.96594438) < 1e-8
    gaps = out["continuum_relative_gap"]["diagonal"]
    assert all(a > b for a, b in zip(gaps, gaps[1:], strict=False))


def test_cli_data_mode(tmp_path, capsys):
    data = np.random.default_rng(3).normal(size=(4, 6))
    np.save(tmp_path / "x.npy", data)
    argv = ["optimal-rho", "--activation", "erf", "--data", str(tmp_path / "x.npy"),
            "--sw2-in", "0.5", "--sb2-in", "0.01", "--depths", "20,80", "--json",
            "--no-continuum"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["pairs"]["entries"]) == 10
    assert out["pairs"]["spread_offdiagonal"][0]["count"] >= 1


@pytest.mark.parametrize("flags, parameter", [
    (["--depths", ""], "depths"),
    (["--depths", "10,0"], "depths"),
    (["--depths", "10,x"], "depths"),
    (["--K0", "1,2;2,1"], "K0"),
    (["--net", "ffnet"], "net"),
    (["--data", "/nonexistent.npy"], "data"),
])
def test_cli_optimal_rho_bad_input(capsys, flags, parameter):
    assert main(["optimal-rho", "--no-continuum"] + flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and parameter in err[0]
