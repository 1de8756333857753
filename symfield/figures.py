"""`symfield figures`: the optimal-rho figures as PNG (matplotlib, the `plot` extra).

Every number drawn is computed here from the generated code (kernels,
responses, d chi_out / d rho) and the continuum limit; a JSON summary next to
the PNGs records the numbers a reader would quote (optima, exponents, spreads).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from .activations import resolve
from .kernel import load_module
from .optimal import optimal_rho, optimal_rho_map
from .spec import SpecError

K0_DEFAULT = np.array([[0.05, 0.03], [0.03, 0.05]])
SW2, SB2 = 1.25, 0.05
DEPTHS = (10, 50, 100, 200)
DIAG, OFF = (0, 0), (0, 1)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SpecError("figures", "matplotlib",
                        "needs matplotlib: pip install -e '.[plot]'") from None
    return plt


def _log(message: str, progress: bool) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def kernel_and_response_vs_layer(out: Path, activation: str = "erf", depth: int = 100) -> dict:
    """Fig. 3 analog: K^(l) and chi^(l) against l for rho in {1, 0.3, 0.1}."""
    plt = _pyplot()
    act = resolve(activation)
    module = load_module(act)
    rhos = np.array([1.0, 0.3, 0.1])
    r = module.resnet(K0_DEFAULT, rho=rhos, sw2=SW2, sb2=SB2, depth=depth, layers=True,
                      **act.param_values)
    layers = np.arange(depth + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for i, rho in enumerate(rhos):
        for entry, style in ((DIAG, "-"), (OFF, "--")):
            axes[0].plot(layers, r["K_layers"][:, i, entry[0], entry[1]], style, color=f"C{i}",
                         label=f"rho={rho:g} " + ("K_aa" if entry == DIAG else "K_ab"))
            axes[1].plot(layers, r["chi_layers"][:, i, entry[0], entry[1]], style,
                         color=f"C{i}",
                         label=f"rho={rho:g} " + ("chi_aa" if entry == DIAG else "chi_ab"))
    axes[0].set(xlabel="layer l", ylabel="K^(l)", yscale="log", title=f"kernel ({activation})")
    axes[1].set(xlabel="layer l", ylabel="chi^(l)", yscale="log", title="response")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / f"fig3_kernel_response_{activation}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"file": path.name}


def chi_out_vs_rho(out: Path, activation: str = "erf", depths=DEPTHS) -> dict:
    """Fig. 4 analog: chi_out against rho per depth, optima marked, rho*(L) inset."""
    plt = _pyplot()
    act = resolve(activation)
    module = load_module(act)
    result = optimal_rho(activation, SW2, SB2, K0_DEFAULT, list(depths))
    continuum = _continuum(activation)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    summary: dict[str, object] = {"file": f"fig4_chi_out_vs_rho_{activation}.png"}
    for ax, entry, label in ((axes[0], DIAG, "diagonal"), (axes[1], OFF, "offdiagonal")):
        for i, depth in enumerate(depths):
            rho = np.geomspace(0.02, 3.0, 200) / math.sqrt(depth) * math.sqrt(10)
            r = module.resnet(K0_DEFAULT, rho=rho, sw2=SW2, sb2=SB2, depth=depth,
                              **act.param_values)
            ax.plot(rho, r["chi_out"][:, entry[0], entry[1]], color=f"C{i}", label=f"L={depth}")
            optimum = result.optima[entry][i]
            if optimum.rho_star is not None:
                ax.plot(optimum.rho_star, optimum.chi_out_max, "o", color=f"C{i}")
        ax.set(xscale="log", xlabel="rho", ylabel=f"chi_out ({label})",
               title=f"{activation}: {label} response")
        ax.legend(fontsize=8, loc="lower right" if entry == DIAG else "center right")
        inset = ax.inset_axes([0.08, 0.5, 0.3, 0.36])
        stars = [(d, o.rho_star) for d, o in zip(depths, result.optima[entry], strict=True)
                 if o.rho_star is not None]
        if stars:
            inset.loglog(*zip(*stars, strict=True), "o", color="k", ms=3)
        line = continuum.get(label)
        if line is not None:
            ls = np.geomspace(min(depths), max(depths), 50)
            inset.loglog(ls, line * np.sqrt(1.0 / ls), "-", color="C3", lw=1)
        inset.set_title("rho* vs L (line: continuum)", fontsize=7)
        inset.tick_params(labelsize=6, which="both")
        inset.yaxis.set_minor_formatter(plt.NullFormatter())
        summary[label] = {"rho_star": [o.rho_star for o in result.optima[entry]],
                          "reason": [o.reason for o in result.optima[entry]],
                          "exponent": result.exponent(entry), "sqrt_tstar": line}
    fig.tight_layout()
    fig.savefig(out / str(summary["file"]), dpi=110)
    plt.close(fig)
    return summary


def _continuum(activation: str) -> dict[str, float | None]:
    from .continuum import continuum_optimum

    values: dict[str, float | None] = {}
    for label in ("diagonal", "offdiagonal"):
        c = continuum_optimum(activation, SW2, SB2, K0_DEFAULT, response=label)
        values[label] = None if c.sqrt_tstar is None else float(c.sqrt_tstar)
    return values


def hyperparameter_map(out: Path, activation: str = "erf", depth: int = 100,
                       size: int = 50) -> dict:
    """rho* sqrt(L) over a (sw2, sb2) grid at one depth, with its spread in numbers."""
    plt = _pyplot()
    sw2 = np.linspace(0.5, 3.0, size)
    sb2 = np.linspace(0.0, 0.5, size)
    grid_w, grid_b = np.meshgrid(sw2, sb2)
    start = time.perf_counter()
    optima = optimal_rho_map(activation, grid_w.ravel(), grid_b.ravel(), K0_DEFAULT, depth,
                             [DIAG, OFF])
    seconds = time.perf_counter() - start
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    summary: dict[str, object] = {"file": f"rho_star_map_{activation}_L{depth}.png",
                                  "depth": depth, "grid": size * size, "seconds": seconds,
                                  "sw2_range": [sw2[0], sw2[-1]], "sb2_range": [sb2[0], sb2[-1]]}
    for ax, entry, label in ((axes[0], DIAG, "diagonal"), (axes[1], OFF, "offdiagonal")):
        values = np.array([np.nan if o[entry].rho_star is None else o[entry].rho_star
                           for o in optima]).reshape(size, size) * math.sqrt(depth)
        mesh = ax.pcolormesh(sw2, sb2, values, shading="auto", cmap="viridis")
        fig.colorbar(mesh, ax=ax, label="rho* sqrt(L)")
        finite = values[np.isfinite(values)]
        stats = {"min": float(finite.min()), "max": float(finite.max()),
                 "mean": float(finite.mean()), "std": float(finite.std()),
                 "relative_spread": float((finite.max() - finite.min()) / finite.mean()),
                 "no_interior_maximum": int(np.sum(~np.isfinite(values)))} if finite.size else {}
        summary[label] = stats
        ax.set(xlabel="sigma_w^2", ylabel="sigma_b^2",
               title=(f"{label}: rho* sqrt(L) in [{stats.get('min', 0):.3f}, "
                      f"{stats.get('max', 0):.3f}], std {stats.get('std', 0):.3f}"))
    fig.suptitle(f"{activation}, L = {depth}: optimal rho* sqrt(L) over (sw2, sb2) "
                 "(white: no interior maximum)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / str(summary["file"]), dpi=110)
    plt.close(fig)
    return summary


#: Grid sizes of the phase diagram: quadrature families (tanh) cost ~2 ms per pair moment.
PHASE_SIZES = {"erf": 200, "relu": 200, "tanh": 16}
PHASE_SW2, PHASE_SB2 = (0.05, 4.0), (0.0, 0.5)


def phase_diagram(out: Path, activations=("tanh", "erf", "relu"), sizes=None) -> dict:
    """Order to chaos over (sw2, sb2): log10 xi_c as a heat map, the chi_1 = 1 line.

    Everything comes from :func:`symfield.criticality.scan` (vectorised over the grid).
    White: no fixed point q* (ReLU above sw2 = 2; on sw2 = 2, sb2 > 0 q grows linearly).
    """
    from .criticality import scan

    plt = _pyplot()
    sizes = {**PHASE_SIZES, **(sizes or {})}
    fig, axes = plt.subplots(1, len(activations), figsize=(5.2 * len(activations), 4.6))
    summary: dict[str, object] = {"file": "phase_diagram.png", "sw2_range": list(PHASE_SW2),
                                  "sb2_range": list(PHASE_SB2)}
    for ax, activation in zip(np.atleast_1d(axes), activations, strict=True):
        n = sizes[activation]
        sw2, sb2 = np.linspace(*PHASE_SW2, n), np.linspace(*PHASE_SB2, n)
        grid_w, grid_b = np.meshgrid(sw2, sb2)
        start = time.perf_counter()
        s = scan(activation, grid_w, grid_b)
        seconds = time.perf_counter() - start
        with np.errstate(all="ignore"):
            log_xi = np.log10(s["xi_c"])
        mesh = ax.pcolormesh(sw2, sb2, log_xi, shading="auto", cmap="magma", vmin=0, vmax=3)
        fig.colorbar(mesh, ax=ax, label="log10 xi_c")
        if np.nanmin(s["chi_1"]) < 1 < np.nanmax(s["chi_1"]):
            ax.contour(sw2, sb2, s["chi_1"], levels=[1.0], colors="cyan", linewidths=1.5)
        none = s["status"] == 3
        if none.any():  # edge of the region without a fixed point (ReLU: sw2 = 2)
            edge = sw2[np.argmax(none, axis=1)]
            rows = none.any(axis=1)
            ax.plot(edge[rows], sb2[rows], color="cyan", lw=1.5, ls="--")
        chaotic = int(np.sum(s["chi_1"] > 1))
        summary[activation] = {"grid": [n, n], "seconds": seconds, "chaotic_points": chaotic,
                               "no_fixed_point": int(none.sum()),
                               "xi_c_max": float(np.nanmax(s["xi_c"]))}
        ax.set(xlabel="sigma_w^2", ylabel="sigma_b^2",
               title=f"{activation}: {n}x{n} grid in {seconds:.2f} s")
    fig.suptitle("FFNet order to chaos: log10 xi_c (xi_c = -1/ln chi_c at c*); cyan: chi_1 = 1 "
                 "(dashed: ReLU edge of no fixed point, sw2 = 2); white: no q* > 0 (no c*); "
                 f"colours saturate at xi_c = 1e3; sw2 in [{PHASE_SW2[0]}, {PHASE_SW2[1]}], sb2 in "
                 f"[{PHASE_SB2[0]}, {PHASE_SB2[1]}]", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "phase_diagram.png", dpi=110)
    plt.close(fig)
    return summary


def rho_star_vs_depth(out: Path, activations=("erf", "relu", "tanh"),
                      depths=(10, 20, 50, 100, 200, 500)) -> dict:
    """rho* sqrt(L) against L at fixed (sw2, sb2) per activation (the 1/sqrt(L) law)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    summary: dict[str, object] = {"file": "rho_star_vs_depth.png", "depths": list(depths)}
    for k, activation in enumerate(activations):
        use = [d for d in depths if resolve(activation).family.name != "tanh" or d <= 50]
        result = optimal_rho(activation, SW2, SB2, K0_DEFAULT, use)
        summary[activation] = {}
        for ax, entry, label in ((axes[0], DIAG, "diagonal"), (axes[1], OFF, "offdiagonal")):
            pts = [(o.depth, o.rho_star * math.sqrt(o.depth)) for o in result.optima[entry]
                   if o.rho_star is not None]
            if pts:
                ax.semilogx(*zip(*pts, strict=True), "o-", color=f"C{k}", label=activation)
            summary[activation][label] = {
                "depths": use, "rho_star": result.rho_star(entry),
                "exponent": result.exponent(entry),
                "reason": [o.reason for o in result.optima[entry] if o.reason][:1]}
    for ax, label in ((axes[0], "diagonal"), (axes[1], "offdiagonal")):
        ax.set(xlabel="depth L", ylabel="rho* sqrt(L)", title=f"{label} response")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "rho_star_vs_depth.png", dpi=110)
    plt.close(fig)
    return summary


MC_SW2, MC_SB2, MC_RHO, MC_K0 = 1.2, 0.2, 0.5, 0.5
MC_WIDTH, MC_INITS, MC_DEPTH = 500, 1000, 20
MC_STEP = 1e-2  # relative step of K^(0)_11 for the finite-difference response


def nlo_band(spec, K0: np.ndarray, width: int) -> tuple[dict | None, str | None]:
    """The 1/N band of the kernel ``K^(l)_11`` from the one-loop expansion (``symfield.nlo``).

    Returns ``({"K_mean": (L+1,), "K_std": (L+1,)}, None)``: the kernel's mean to
    O(1/N) and its standard deviation over networks; or ``(None, reason)`` where the
    expansion does not apply (it is derived for one input).
    """
    from . import nlo

    if K0.shape != (1, 1):
        return None, f"the generated one-loop path is for one input (P = 1), not P = {len(K0)}"
    loop = nlo.one_loop(spec, float(K0[0, 0]), nlo.moments_for(spec.activation))
    return band_from_one_loop(loop, float(K0[0, 0]), width), None


def band_from_one_loop(loop, K0: float, width: int) -> dict:
    """``K^(0..L)`` band from a one-loop result (P = 1): ``loop.fields.k_index`` indexes
    the hidden kernels ``K^(1..L)`` among the fields, ``loop.mean`` their saddle values,
    ``loop.shift`` ``N (E[K] - K*)`` and ``loop.V`` ``N Cov``. ``K^(0)`` is the average of
    ``N`` squares of ``N(0, K0)`` numbers: mean ``K0``, variance ``2 K0^2 / N``."""
    k = np.asarray(loop.fields.k_index, dtype=int)
    mean = np.asarray(loop.mean, dtype=float)[k] + np.asarray(loop.shift, dtype=float)[k] / width
    var = np.diag(np.asarray(loop.V, dtype=float))[k] / width
    return {"K_mean": np.concatenate([[K0], mean]),
            "K_std": np.sqrt(np.concatenate([[2.0 * K0**2 / width], var]))}


def montecarlo_vs_depth(out: Path, quick: bool = False, progress: bool = False) -> dict:
    """Fischer-Dahmen-Helias Fig. 2 analog: K^(l)_11 and the response against depth.

    ResNet and FFNet (erf), one input. Monte Carlo of width-N networks: the
    mean over initializations (points) and the spread +- 1 s.d. over networks
    (band); the NNGP kernel and response (lines) from the generated code. The
    response of each network is a central difference in K^(0)_11 with common
    random numbers (the same seed, so the same per-initialization streams).
    """
    from .kernel import compute
    from .simulate import simulate
    from .spec import NetworkSpec

    plt = _pyplot()
    inits, depth = (100, 10) if quick else (MC_INITS, MC_DEPTH)
    K0 = np.array([[MC_K0]])
    step = MC_STEP * MC_K0
    layers = np.arange(depth + 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    summary: dict[str, object] = {
        "file": "fig2_montecarlo_kernel_response.png", "activation": "erf", "sw2": MC_SW2,
        "sb2": MC_SB2, "rho": MC_RHO, "K0": MC_K0, "width": MC_WIDTH, "inits": inits,
        "depth": depth, "seed": 1, "response": f"central difference, step {step:g} in K0_11"}
    missing = False
    for k, (net, rho) in enumerate((("resnet", MC_RHO), ("ffnet", None))):
        spec = NetworkSpec(net, "erf", MC_SW2, MC_SB2, depth, rho=rho)
        runs = [simulate(spec, K0 + shift, MC_WIDTH, inits, seed=1, keep_samples=shift != 0,
                         progress=progress) for shift in (0.0, step, -step)]
        assert runs[1].K_samples is not None and runs[2].K_samples is not None
        chi = (runs[1].K_samples[:, :, 0, 0] - runs[2].K_samples[:, :, 0, 0]) / (2 * step)
        theory = compute(spec, K0, layers=True)
        color = f"C{k}"
        mean, spread = runs[0].K_mean[:, 0, 0], np.sqrt(runs[0].K_var[:, 0, 0])
        axes[0].fill_between(layers, mean - spread, mean + spread, color=color, alpha=0.2,
                             lw=0)
        axes[0].errorbar(layers, mean, yerr=runs[0].K_stderr[:, 0, 0], fmt="o", ms=3,
                         color=color, label=rf"{net}: Monte Carlo mean, $\pm$1 s.d. band")
        axes[0].plot(layers, theory["K_layers"][:, 0, 0], "-", color=color, lw=1.2,
                     label=f"{net}: NNGP")
        chi_mean, chi_sd = chi.mean(axis=0), chi.std(axis=0, ddof=1)
        # log axis: the lower edge of the band is clipped at a tenth of the mean
        axes[1].fill_between(layers, np.maximum(chi_mean - chi_sd, 0.1 * chi_mean),
                             chi_mean + chi_sd, color=color, alpha=0.2, lw=0)
        axes[1].plot(layers, chi_mean, "o", ms=3, color=color,
                     label=rf"{net}: Monte Carlo mean, $\pm$1 s.d. band")
        axes[1].plot(layers, theory["chi_layers"][:, 0, 0], "-", color=color, lw=1.2,
                     label=f"{net}: NNGP")
        band, reason = nlo_band(spec, K0, MC_WIDTH)
        missing = missing or band is None
        if band is not None:
            lo = band["K_mean"] - band["K_std"]
            hi = band["K_mean"] + band["K_std"]
            axes[0].plot(layers, lo, ":", color=color, lw=1)
            axes[0].plot(layers, hi, ":", color=color, lw=1, label=f"{net}: 1/N theory band")
        chi_stderr = chi_sd / math.sqrt(inits)
        summary[net] = {
            "K_mean": mean.tolist(), "K_sd": spread.tolist(),
            "K_stderr": runs[0].K_stderr[:, 0, 0].tolist(),
            "K_nngp": theory["K_layers"][:, 0, 0].tolist(),
            "chi_mean": chi_mean.tolist(), "chi_sd": chi_sd.tolist(),
            "chi_stderr": chi_stderr.tolist(), "chi_nngp": theory["chi_layers"][:, 0, 0].tolist(),
            "nlo_band": reason or "drawn (dotted)", "seconds": sum(r.elapsed for r in runs)}
        if band is not None:
            summary[net].update(K_nlo_mean=band["K_mean"].tolist(),
                                K_nlo_std=band["K_std"].tolist())
    axes[0].set(xlabel=r"layer $l$", ylabel=r"$K^{(l)}_{11}$", title="kernel")
    axes[1].set(xlabel=r"layer $l$", yscale="log",
                ylabel=r"$\chi^{(l)}_{11} = \partial K^{(l)}_{11} / \partial K^{(0)}_{11}$",
                title="response")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.text(0.5, 0.01,
             rf"erf, $\sigma_w^2 = {MC_SW2}$, $\sigma_b^2 = {MC_SB2}$, ResNet $\rho = {MC_RHO}$, "
             rf"$K^{{(0)}}_{{11}} = {MC_K0}$; $N = {MC_WIDTH}$, {inits} initializations "
             r"(seed 1)" "\n" r"points: Monte Carlo mean, bands: $\pm 1$ s.d. over networks, "
             "lines: NNGP (generated code)"
             + ("; dotted: 1/N theory" if not missing else "; no 1/N band (symfield.nlo absent)"),
             ha="center", fontsize=7.5)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out / str(summary["file"]), dpi=110)
    plt.close(fig)
    return summary


def make_figures(out: Path, progress: bool = True, quick: bool = False) -> dict:
    """All figures into ``out``; returns (and writes) the JSON summary."""
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {}
    steps = [
        ("fig3", lambda: kernel_and_response_vs_layer(out)),
        ("fig4_erf", lambda: chi_out_vs_rho(out, "erf")),
        ("fig4_relu", lambda: chi_out_vs_rho(out, "relu")),
        ("map_erf", lambda: hyperparameter_map(out, "erf", size=12 if quick else 50)),
        ("depth", lambda: rho_star_vs_depth(out, depths=(10, 50) if quick else
                                            (10, 20, 50, 100, 200, 500))),
        ("phase_diagram", lambda: phase_diagram(
            out, sizes={"erf": 40, "relu": 40, "tanh": 8} if quick else None)),
        ("fig2_montecarlo", lambda: montecarlo_vs_depth(out, quick=quick, progress=progress)),
    ]
    for name, step in steps:
        start = time.perf_counter()
        _log(f"figures: {name} ...", progress)
        summary[name] = step()
        _log(f"figures: {name} done in {time.perf_counter() - start:.1f}s", progress)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    return summary
