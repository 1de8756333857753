"""`symfield simulate`: JSON contract, data input, seeds and chunking, errors, dask."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from symfield import simulate as mc
from symfield.cli import main
from symfield.spec import NetworkSpec

BASE = ["simulate", "--net", "resnet", "--activation", "erf", "--sw2", "1.25", "--sb2", "0.05",
        "--rho", "0.6", "--depth", "3", "--K0", "0.8,0.3;0.3,0.5", "--width", "20",
        "--inits", "50", "--seed", "1", "--no-progress"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_json_contract(capsys: pytest.CaptureFixture[str]) -> None:
    payload = run_json(capsys, *BASE)
    assert (payload["width"], payload["inits"], payload["seed"]) == (20, 50, 1)
    assert payload["method"] == "kernel" and "m4" in payload["var_stderr"]
    layers = payload["layers"]
    assert [entry["layer"] for entry in layers] == [0, 1, 2, 3]
    assert layers[0]["C"] is None
    for entry in layers[1:]:
        for field in ("K", "C"):
            assert set(entry[field]) == {"mean", "mean_stderr", "var", "var_stderr"}
            assert np.array(entry[field]["var_stderr"]).shape == (2, 2)
    readout = payload["readout"]["C_out"]
    assert set(payload["readout"]["K_out"]) == {"mean", "mean_stderr", "var", "var_stderr"}
    # the same numbers as the Python API
    spec = NetworkSpec("resnet", "erf", 1.25, 0.05, 3, rho=0.6)
    direct = mc.simulate(spec, [[0.8, 0.3], [0.3, 0.5]], 20, 50, 1)
    np.testing.assert_array_equal(np.array([e["K"]["var"] for e in layers]), direct.K_var)
    np.testing.assert_array_equal(np.array(readout["mean"]), direct.K_out_mean)
    np.testing.assert_array_equal(np.array(readout["var_stderr"]), direct.K_out_var_stderr)
    np.testing.assert_array_equal(np.array(payload["readout"]["K_out"]["var"]), direct.Y_var)
    nngp = payload["nngp"]
    assert np.array(nngp["K_layers"]).shape == (4, 2, 2) and nngp["K_layers"][0] == [[0.8, 0.3],
                                                                                     [0.3, 0.5]]
    # K^(l) = K^(l-1) + rho^2 C^(l) at infinite width
    np.testing.assert_allclose(np.diff(nngp["K_layers"], axis=0),
                               0.36 * np.array(nngp["C_layers"]), rtol=1e-12)


def test_no_nngp(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_json(capsys, *BASE, "--no-nngp")["nngp"] is None
    code, out, _ = run(capsys, *BASE, "--no-nngp")
    assert code == 0 and "C_out[0,0]" in out


def test_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *BASE)
    assert code == 0
    assert "N=20" in out and "inits=50" in out and "seed=1" in out
    assert sum(line.startswith("C^(3)[") for line in out.splitlines()) == 3
    assert any(line.startswith("C_out[0,1]") for line in out.splitlines())
    assert any(line.startswith("K_out[1,1]") for line in out.splitlines())


def test_same_numbers_whatever_the_batch(capsys: pytest.CaptureFixture[str]) -> None:
    first = run_json(capsys, *BASE)
    again = run_json(capsys, *BASE, "--batch", "3")
    other = run_json(capsys, *BASE[:-2], "2", "--no-progress")
    for payload in (first, again, other):
        payload.pop("elapsed_seconds")
        payload.pop("chunks")
    assert first == again
    assert first["layers"] != other["layers"]


def test_data_enters_through_the_input_layer(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    X = np.array([[1.0, 0.5, -0.2], [0.3, -1.0, 0.8], [0.0, 0.4, 0.4]])
    np.save(tmp_path / "x.npy", X)
    payload = run_json(capsys, *BASE, "--data", str(tmp_path / "x.npy"), "--sw2-in", "2.0",
                       "--sb2-in", "0.1")
    want = 0.1 + 2.0 * X @ X.T / 3
    np.testing.assert_allclose(payload["K0"], want, rtol=1e-15)
    assert (payload["spec"]["sw2_in"], payload["spec"]["sb2_in"]) == (2.0, 0.1)
    assert np.array(payload["layers"][0]["K"]["mean"]).shape == (3, 3)
    # K_hat^(0) is an average of N products of h^(0) ~ N(0, K0)
    z = (np.array(payload["layers"][0]["K"]["mean"]) - want) / np.array(
        payload["layers"][0]["K"]["mean_stderr"])
    assert np.max(np.abs(z)) < 4.5


@pytest.mark.parametrize(("flag", "value"), [
    ("--width", "0"), ("--inits", "1"), ("--depth", "0"), ("--rho", "-0.1"),
    ("--activation", "sigmoidal"), ("--seed", "-3"), ("--workers", "0"), ("--width", "2.5"),
    ("--method", "exact"), ("--batch", "x"), ("--inits", "nan"),
])
def test_bad_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], flag: str,
                                         value: str) -> None:
    names = (f"{flag[2:]}={value!r}", f"{flag[2:]}={value}")  # parameter and value as typed
    argv = list(BASE)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and any(n in err for n in names), err


def test_save_samples(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "samples.npz"
    payload = run_json(capsys, *BASE, "--save-samples", str(path))
    saved = np.load(path)
    assert saved["K"].shape == saved["C"].shape == (50, 4, 2, 2)
    np.testing.assert_allclose(saved["Y"].mean(0), payload["readout"]["K_out"]["mean"],
                               rtol=1e-13)
    np.testing.assert_allclose(saved["K"][:, 3].mean(0), payload["layers"][3]["K"]["mean"],
                               rtol=1e-13)
    np.testing.assert_allclose(saved["C"][:, 1].var(0, ddof=1), payload["layers"][2]["C"]["var"],
                               rtol=1e-12)
    np.testing.assert_allclose(saved["C"][:, -1].mean(0), payload["readout"]["C_out"]["mean"],
                               rtol=1e-13)
    code, _, err = run(capsys, *BASE, "--save-samples", str(tmp_path / "no" / "x.npz"))
    assert code == 2 and "save_samples=" in err and "directory" in err
    code, _, err = run(capsys, *BASE, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1")
    assert code == 2 and "workers=" in err and "not both" in err


def test_progress_bar_on_a_terminal(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setattr(mc, "PROGRESS_DELAY", 0.0)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    code, out, err = run(capsys, *BASE[:-1], "--json")
    assert code == 0 and json.loads(out)["inits"] == 50
    assert err.startswith("\r") and err.endswith("\n") and err.count("\n") == 1
    assert "50/50 initializations" in err.split("\r")[-1] and "100%" in err


def test_memory_refused(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setattr(mc, "available_memory", lambda: 1000)
    code, out, err = run(capsys, *BASE)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "memory=" in err and "available" in err


def test_workers_without_dask(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # import fails
    code, _, err = run(capsys, *BASE, "--workers", "2")
    assert code == 2 and "workers=2" in err and 'pip install -e ".[dask]"' in err
    code, _, err = run(capsys, *BASE, "--scheduler", "tcp://127.0.0.1:1")
    assert code == 2 and "scheduler=" in err and "dask" in err


def test_workers_give_the_same_numbers() -> None:
    pytest.importorskip("dask.distributed")
    spec = NetworkSpec("ffnet", "erf", 1.25, 0.05, 3)
    K0 = np.array([[0.8, 0.3], [0.3, 0.5]])
    local = mc.simulate(spec, K0, 12, 300, 4, batch=17)
    spread = mc.simulate(spec, K0, 12, 300, 4, workers=2, chunk=64, keep_samples=True)
    assert spread.workers == 2 and spread.chunks == 5
    for name in ("K_mean", "K_stderr", "C_var", "C_var_stderr", "K_out_var"):
        np.testing.assert_array_equal(getattr(local, name), getattr(spread, name))
    assert spread.K_samples is not None and spread.K_samples.shape == (300, 4, 2, 2)
    # an existing cluster, by address
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster:
        remote = mc.simulate(spec, K0, 12, 300, 4, scheduler=cluster.scheduler_address)
    for name in ("K_mean", "C_var_stderr"):
        np.testing.assert_array_equal(getattr(local, name), getattr(remote, name))


def test_bench_simulate_rows() -> None:
    from symfield import bench

    result = bench.simulate_cases(1, False, width=8, depth=2, n_init=12, n_slice=4)
    (case,) = result["cases"]
    assert case["target"] == bench.SIMULATE_TARGET and case["met"] == (case["ratio"] >= 50)
    assert result["weights_seconds_scaled"] == pytest.approx(3 * result["weights_slice_seconds"])
    assert case["ratio"] == pytest.approx(result["weights_seconds_scaled"]
                                          / result["kernel_seconds"])
    assert result["config"]["inits"] == 12
    json.dumps(result)


def test_montecarlo_figure_quick(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from symfield import figures

    summary = figures.montecarlo_vs_depth(tmp_path, quick=True)
    assert (tmp_path / summary["file"]).stat().st_size > 10_000
    assert summary["width"] == 500 and summary["inits"] == 100
    for net in ("resnet", "ffnet"):
        row = summary[net]
        # Monte Carlo against the NNGP lines (finite-width bias ~ 1/N, far below the errors)
        z_K = (np.array(row["K_mean"]) - row["K_nngp"]) / np.maximum(row["K_stderr"], 1e-300)
        z_chi = (np.array(row["chi_mean"]) - row["chi_nngp"]) / np.array(row["chi_stderr"])
        assert np.max(np.abs(z_K)) < 4.5 and np.max(np.abs(z_chi)) < 4.5
        assert row["chi_nngp"][0] == 1.0 and row["chi_mean"][0] == pytest.approx(1.0, abs=0.05)
        assert row["nlo_band"] == "drawn (dotted)"


def test_band_from_one_loop_arithmetic() -> None:
    from types import SimpleNamespace

    from symfield.figures import band_from_one_loop

    # fields C1, K1, C2, K2, C_out; N = 100
    loop = SimpleNamespace(fields=SimpleNamespace(k_index=np.array([1, 3])),
                           mean=np.array([0.6, 0.8, 0.7, 1.1, 0.5]),
                           shift=np.array([1.0, -2.0, 3.0, 5.0, 0.0]),
                           V=np.diag([1.0, 4.0, 9.0, 16.0, 25.0]))
    band = band_from_one_loop(loop, 0.5, 100)
    np.testing.assert_allclose(band["K_mean"], [0.5, 0.8 - 0.02, 1.1 + 0.05])
    np.testing.assert_allclose(band["K_std"], [np.sqrt(2 * 0.25 / 100), 0.2, 0.4])


def test_nlo_band_against_monte_carlo() -> None:
    """The one-loop band of `symfield nlo` against the Monte Carlo (P = 1)."""
    from symfield.figures import nlo_band

    spec = NetworkSpec("resnet", "erf", 1.2, 0.2, 5, rho=0.5)
    K0 = np.array([[0.5]])
    band, reason = nlo_band(spec, K0, 50)
    assert band is not None, reason
    result = mc.simulate(spec, K0, 50, 4000, 3)
    z_mean = (result.K_mean[:, 0, 0] - band["K_mean"]) / result.K_stderr[:, 0, 0]
    z_var = (result.K_var[:, 0, 0] - band["K_std"] ** 2) / result.K_var_stderr[:, 0, 0]
    print(f"\nnlo band vs MC (N = 50): max |z| mean {np.max(np.abs(z_mean)):.2f}, "
          f"variance {np.max(np.abs(z_var)):.2f}")
    assert np.max(np.abs(z_mean)) < 4.5 and np.max(np.abs(z_var)) < 4.5
