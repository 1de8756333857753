"""`symfield.bench` at tiny sizes: structure, baseline agreement, table. No timing asserts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from generated import erf
from symfield import bench


@pytest.fixture(scope="module")
def result() -> dict:
    return bench.run(repeats=1, progress=False, P=5, depth=10, n_rho=3, with_optimal=False)


def test_structure(result: dict) -> None:
    assert len(result["cases"]) == 4
    assert len({c["name"] for c in result["cases"]}) == 4
    for case in result["cases"]:
        assert set(case) >= {"name", "seconds", "baseline_seconds", "ratio", "target", "met"}
        for key in ("seconds", "baseline_seconds", "ratio"):
            assert isinstance(case[key], float) and case[key] > 0
        assert case["ratio"] == pytest.approx(case["baseline_seconds"] / case["seconds"])
        if case["target"] is None:
            assert case["met"] is None
        else:
            assert isinstance(case["target"], float)
            assert case["met"] == (case["ratio"] >= case["target"])
    assert [c["target"] for c in result["cases"]].count(None) == 2
    assert isinstance(result["sweep_per_rho_over_single"], float)
    assert set(result["sweep_per_rho_seconds"]) == {"batched", "single", "baseline"}
    assert result["config"] == {"P": 5, "depth": 10, "n_rho": 3, "repeats": 1,
                                "rho": bench.RHO, "rho_range": list(bench.RHO_RANGE),
                                "sw2": bench.SW2, "sb2": bench.SB2}
    assert result["numpy"] == np.__version__
    json.dumps(result)


def test_baseline_agrees(result: dict) -> None:
    assert isinstance(result["max_abs_diff"], float)
    assert result["max_abs_diff"] < bench.TOLERANCE
    assert result["agrees"] is True


def test_baseline_matches_generated_directly() -> None:
    K0 = bench.make_kernel(5)
    assert np.all(np.linalg.eigvalsh(K0) > 0)
    rhos = np.array([0.1, 0.5, 1.0])
    got = erf.resnet(K0, rho=rhos, sw2=bench.SW2, sb2=bench.SB2, depth=10, responses=False)
    for rho, K in zip(rhos, got["K"], strict=True):
        want = bench.baseline_resnet(K0, rho, bench.SW2, bench.SB2, 10)
        np.testing.assert_allclose(K, want, rtol=0, atol=1e-12)
    # depth 0 is the identity
    np.testing.assert_array_equal(bench.baseline_resnet(K0, 0.5, bench.SW2, bench.SB2, 0), K0)


def test_format_table(result: dict) -> None:
    text = bench.format_table(result)
    assert "P=5" in text and "L=10" in text
    for case in result["cases"]:
        assert case["name"] in text
    assert "sweep per rho / single call" in text
    assert "max |K_generated - K_baseline|" in text
    assert f"numpy {np.__version__}" in text


def test_progress_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    bench.run(repeats=1, progress=True, P=3, depth=2, n_rho=2, with_optimal=False)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "bench:" in captured.err
