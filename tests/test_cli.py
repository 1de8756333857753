"""The command line: JSON contract, bad input (exit 2, one line naming the parameter)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from symfield.cli import main

EXAMPLE = ["kernel", "--net", "resnet", "--activation", "erf", "--sw2", "1.25", "--sb2",
           "0.05", "--rho", "0.1", "--depth", "100", "--K0", "0.05,0.03;0.03,0.05"]


def run_json(capsys, argv):
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_kernel_json_keys_and_values(capsys):
    out = run_json(capsys, EXAMPLE)
    for key in ("K", "K_out", "chi", "chi_out"):
        assert np.shape(out[key]) == (2, 2)
    # independent check: a plain loop of THEORY.md's recursion (Williams' arcsine kernel)
    K = np.array([[0.05, 0.03], [0.03, 0.05]])
    for _ in range(100):
        d = np.diag(K)
        K = K + 0.01 * (0.05 + 1.25 * 2 / np.pi * np.arcsin(2 * K / np.sqrt(np.outer(1 + 2 * d,
                                                                                 1 + 2 * d))))
    np.testing.assert_allclose(out["K"], K, rtol=1e-12)
    assert out["moments"] == "exact"


def test_kernel_tensor_and_layers(capsys):
    out = run_json(capsys, EXAMPLE[:-4] + ["--depth", "5", "--K0", "0.05,0.03;0.03,0.05",
                                           "--tensor", "--layers"])
    tensor = np.array(out["response_tensor"])
    assert tensor.shape == (2, 2, 2, 2)
    np.testing.assert_allclose(tensor[0, 1, 0, 1], out["chi"][0][1])
    np.testing.assert_allclose(tensor[0, 0, 0, 0], out["chi"][0][0])
    assert np.shape(out["K_layers"]) == (6, 2, 2)
    np.testing.assert_allclose(out["K_layers"][-1], out["K"])


def test_ffnet_has_no_rho(capsys):
    out = run_json(capsys, ["kernel", "--net", "ffnet", "--activation", "relu", "--sw2", "2",
                            "--sb2", "0", "--depth", "7", "--K0", "1.5"])
    # ReLU at (sw2, sb2) = (2, 0) preserves the variance (He initialisation)
    np.testing.assert_allclose(out["K"], [[1.5]], rtol=1e-14)
    np.testing.assert_allclose(out["chi"], [[1.0]], rtol=1e-14)


@pytest.mark.parametrize("flags, parameter", [
    (["--sw2", "-1"], "sw2"),
    (["--sb2", "-0.1"], "sb2"),
    (["--sw2-out", "-2"], "sw2_out"),
    (["--rho", "-0.5"], "rho"),
    (["--depth", "0"], "depth"),
    (["--depth", "2.5"], "depth"),
    (["--K0", "1,2;3,4"], "K0"),
    (["--K0", "1,2;2,1"], "K0"),
    (["--K0", "nan"], "K0"),
    (["--K0", "1,inf;inf,1"], "K0"),
    (["--K0", "1,2"], "K0"),
    (["--K0", "a,b"], "K0"),
    (["--K0", "0,0;0,1"], "K0"),
    (["--sw2", "nan"], "sw2"),
    (["--activation", "softmax"], "activation"),
    (["--activation", "leaky_relu:x"], "activation"),
    (["--activation", "expr:log(x)"], "activation"),
    (["--activation", "expr:x+y"], "activation"),
    (["--activation", "expr:Max(x, 0)"], "activation"),  # kink, no closed form: refused
    (["--net", "cnn"], "net"),
    (["--dps", "3"], "dps"),
])
def test_bad_input_exits_2_with_one_line(capsys, flags, parameter):
    argv = ["kernel", "--rho", "0.1"] + flags
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert parameter in err[0]
    assert "Traceback" not in err[0]


def test_ffnet_rejects_rho(capsys):
    assert main(["kernel", "--net", "ffnet", "--rho", "0.3"]) == 2
    assert "rho" in capsys.readouterr().err


def test_resnet_requires_rho(capsys):
    assert main(["kernel", "--net", "resnet"]) == 2
    assert "rho" in capsys.readouterr().err


def test_console_script_exit_status():
    result = subprocess.run([sys.executable, "-m", "symfield.cli", "kernel", "--rho", "-1"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "rho" in result.stderr
