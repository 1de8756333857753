"""Property tests of the generated kernels: symmetry, PSD outputs, monotone ResNet diagonal."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from generated import erf, leaky_relu

FAMILIES = {"erf": (erf, {}), "relu": (leaky_relu, {"alpha": 0.0}),
            "leaky": (leaky_relu, {"alpha": 0.3}), "abs": (leaky_relu, {"alpha": -1.0})}


@st.composite
def kernels(draw, max_inputs: int = 4):
    """Random PSD kernels with positive diagonal, including near-degenerate ones."""
    n_inputs = draw(st.integers(1, max_inputs))
    rank = draw(st.integers(1, n_inputs + 2))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_inputs, rank))
    if draw(st.booleans()) and n_inputs > 1:
        x[1] = x[0] * (1 + draw(st.floats(0, 1e-9)))  # correlation within 1e-9 of 1
    scale = draw(st.floats(1e-3, 5.0))
    return scale * x @ x.T / rank + draw(st.floats(1e-6, 0.5))


settings.register_profile("symfield", max_examples=40, deadline=None)
settings.load_profile("symfield")


@given(K0=kernels(), family=st.sampled_from(sorted(FAMILIES)),
       sw2=st.floats(0.0, 3.0), sb2=st.floats(0.0, 1.0), rho=st.floats(0.0, 2.0),
       depth=st.integers(1, 30))
def test_resnet_outputs_symmetric_psd_and_growing(K0, family, sw2, sb2, rho, depth):
    module, params = FAMILIES[family]
    r = module.resnet(K0, rho=rho, sw2=sw2, sb2=sb2, depth=depth, layers=True, tensor=True,
                      **params)
    for key in ("K", "K_out", "chi", "chi_out"):
        assert np.all(np.isfinite(r[key])), key
        np.testing.assert_array_equal(r[key], r[key].T)
    for key in ("K", "K_out"):
        scale = np.max(np.abs(r[key]))
        assert np.min(np.linalg.eigvalsh(r[key])) >= -1e-10 * scale
    diagonals = np.diagonal(r["K_layers"], axis1=1, axis2=2)
    assert np.all(np.diff(diagonals, axis=0) >= -1e-12 * diagonals[1:])
    np.testing.assert_array_equal(r["K_layers"][-1], r["K"])
    assert np.all(np.isfinite(r["response_tensor"]))


@given(K0=kernels(), family=st.sampled_from(sorted(FAMILIES)),
       sw2=st.floats(0.1, 3.0), sb2=st.floats(0.0, 1.0), depth=st.integers(1, 30))
def test_ffnet_outputs_symmetric_psd(K0, family, sw2, sb2, depth):
    module, params = FAMILIES[family]
    r = module.ffnet(K0, sw2=sw2, sb2=sb2, depth=depth, **params)
    for key in ("K", "K_out"):
        assert np.all(np.isfinite(r[key]))
        np.testing.assert_array_equal(r[key], r[key].T)
        assert np.min(np.linalg.eigvalsh(r[key])) >= -1e-10 * np.max(np.abs(r[key]))


def test_batched_sweep_equals_single_calls():
    K0 = np.array([[0.5, 0.2, 0.1], [0.2, 0.7, 0.3], [0.1, 0.3, 0.4]])
    rhos = np.linspace(0.0, 1.5, 7)
    batch = erf.resnet(K0, rho=rhos, sw2=1.25, sb2=0.05, depth=25, tensor=True)
    for i, rho in enumerate(rhos):
        single = erf.resnet(K0, rho=rho, sw2=1.25, sb2=0.05, depth=25, tensor=True)
        for key, value in single.items():
            np.testing.assert_allclose(batch[key][i], value, rtol=1e-14, atol=0)


def test_correlation_exactly_one_stays_finite():
    K0 = np.array([[0.3, 0.3], [0.3, 0.3]])
    for module, params in FAMILIES.values():
        r = module.resnet(K0, rho=0.7, sw2=2.0, sb2=0.1, depth=50, tensor=True, **params)
        assert all(np.all(np.isfinite(v)) for v in r.values())
        # identical inputs stay identical
        np.testing.assert_allclose(r["K"][0, 1], r["K"][0, 0], rtol=1e-14)


def test_deep_products_stay_finite_in_log_space():
    K0 = np.array([[1.0, 0.5], [0.5, 1.0]])
    r = erf.ffnet(K0, sw2=4.0, sb2=0.0, depth=20000)
    assert np.all(np.isfinite(r["log_abs_chi"]))
    # |log chi| beyond float64's exp range: chi itself under- or overflows, its log does not
    assert abs(r["log_abs_chi"][0, 1]) > 745
