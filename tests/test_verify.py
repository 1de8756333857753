"""`symfield verify`: the referee and the rounding rows."""

import json

import pytest

from symfield.cli import main
from symfield.verify.table import CASES, SLICE_CASES, format_table, referee_rows, run_verify


def test_cases_cover_every_family_both_nets_and_hard_points():
    """All families on both nets; correlations near +-1, variances near 0, large
    variances, deep ResNets; d/d rho and the tensors on every family's ResNet."""
    from symfield.verify.table import ALL_FAMILIES

    for act in ALL_FAMILIES:
        nets = {c.spec.net for c in CASES if c.spec.activation == act}
        assert nets == {"ffnet", "resnet"}, act
        assert any(c.spec.activation == act and c.checks == "drho" for c in CASES)
    labels = " ".join(c.label for c in CASES)
    for hard in ("c=1-2^-40", "c=-(1-2^-40)", "K~1e-9", "K~256", "L=100", "q=10000"):
        assert hard in labels


def test_format_table_counts_failures():
    rows = referee_rows(SLICE_CASES[1:], mp_path=False)
    assert all(r["ok"] for r in rows)
    broken = dict(rows[0], ok=False, beyond=True)
    text = format_table([*rows, broken])
    assert f"{len(rows)} passed, 1 failed (1 of them beyond" in text


@pytest.mark.slow
def test_quick_verify_passes(capsys):
    """Every case within the stated ranges passes; the CLI exits 0, prints JSON."""
    code = main(["verify", "--quick", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["ok"], out["failed"]
    assert out["seconds"] < 180


@pytest.mark.slow
def test_full_verify_fails_only_beyond_the_stated_range():
    """With the networks beyond QUADRATURE_Q_MAX (variances 16 and 1e4) the quadrature
    families disagree with the referee (until the quadrature covers that range); every
    other row passes."""
    rows = run_verify(progress=False)
    failed = [r for r in rows if not r["ok"]]
    assert all(r.get("beyond") for r in failed), format_table(rows)
