"""Benchmark of AFM force-curve fitting (afmformats + nanite through mechanoscope).

Prints JSON with:

- ``speed``: curves handled per second (reading + checks + fit, one process) on
  simulated curves (afmformats HDF5) and, when ``../shared/data/afm_force_curves`` is
  present, on nanite's real test curves (JPK files, incl. broken ones), each with and
  without nanite's quality rating;
- ``recovery``: absolute percentage error of E against the simulator's truth — median
  and max — for noise-free curves, for noisy curves (force noise), and for noisy
  curves on a tilted baseline with and without nanite's slope correction; plus the
  fraction of noisy fits within 2 and 4 of their own standard errors;
- ``reference``: nanite's reference fit of ``fmt-jpk-fd_spot3-0192.jpk-force``
  (hertz_para, E = 14741.958 Pa in nanite's test) as mechanoscope reproduces it.

Usage: python benchmarks/afm.py [--n-curves 60] [--noise-pn 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np

from mechanoscope.mechanics.afm_fit import AFMFitConfig, fit_afm_files
from mechanoscope.simulate.afm_curves import AFMCurveSimConfig, simulate_afm_curves

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "afm_force_curves"
RAW_FRAME = ["compute_tip_position", "correct_force_offset"]
SLOPE = ["compute_tip_position", "correct_tip_offset", "correct_force_slope", "correct_force_offset"]


def _recovery(folder: Path, sim: AFMCurveSimConfig, fit: AFMFitConfig, seed: int) -> dict:
    truth = simulate_afm_curves(folder, sim, seed=seed)
    res = fit_afm_files(folder, fit)
    tab = res.table.merge(truth, on=["file", "curve_index"], suffixes=("", "_true"))
    ok = tab[tab.status == "ok"]
    ape = 100 * np.abs(ok.youngs_modulus_pa / ok.youngs_modulus_pa_true - 1)
    z = np.abs(ok.youngs_modulus_pa - ok.youngs_modulus_pa_true) / ok.youngs_modulus_stderr_pa
    return {
        "n_curves": int(len(tab)), "n_failed": int((tab.status != "ok").sum()),
        "median_ape_percent": round(float(ape.median()), 4), "max_ape_percent": round(float(ape.max()), 4),
        # noise-free fits have a standard error of ~0 Pa: the fraction within k of them means nothing there
        "within_2_stderr": round(float((z < 2).mean()), 3) if sim.noise_pn > 0 else None,
        "within_4_stderr": round(float((z < 4).mean()), 3) if sim.noise_pn > 0 else None,
        "max_contact_point_error_nm": round(float(1e9 * np.abs(ok.contact_point_m - ok.contact_point_m_true).max()), 3)
        if fit.preprocessing == RAW_FRAME else None,
        "curves_per_second": round(res.curves_per_second, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-curves", type=int, default=60)
    ap.add_argument("--noise-pn", type=float, default=10.0)
    ap.add_argument("--tilt-pn-per-um", type=float, default=100.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    out: dict = {"settings": vars(args), "speed": {}, "recovery": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = args.n_curves
        base = dict(n_curves=n, curves_per_file=20)
        out["recovery"]["noise_free"] = _recovery(tmp / "a", AFMCurveSimConfig(**base, noise_pn=0.0),
                                                  AFMFitConfig(rate_quality=False, preprocessing=RAW_FRAME), args.seed)
        out["recovery"]["noisy"] = _recovery(tmp / "b", AFMCurveSimConfig(**base, noise_pn=args.noise_pn),
                                             AFMFitConfig(rate_quality=False), args.seed)
        tilted = AFMCurveSimConfig(**base, noise_pn=args.noise_pn, baseline_tilt_pn_per_um=args.tilt_pn_per_um)
        out["recovery"]["noisy_tilted_default_preprocessing"] = _recovery(tmp / "c", tilted, AFMFitConfig(rate_quality=False), args.seed)
        out["recovery"]["noisy_tilted_slope_corrected"] = _recovery(tmp / "d", tilted, AFMFitConfig(rate_quality=False, preprocessing=SLOPE), args.seed)
        out["speed"]["simulated_no_rating"] = out["recovery"]["noisy"]["curves_per_second"]
        rated = fit_afm_files(tmp / "b", AFMFitConfig(rate_quality=True))
        out["speed"]["simulated_with_rating"] = round(rated.curves_per_second, 2)
    if REAL.is_dir():
        folder = REAL / "nanite_tests"
        for rq in (False, True):
            res = fit_afm_files(folder, AFMFitConfig(rate_quality=rq))
            out["speed"][f"real_jpk_{'with' if rq else 'no'}_rating"] = round(res.curves_per_second, 2)
            out["speed"]["real_jpk_curves"] = {"n": res.n_curves, "ok": res.n_ok, "failed": res.n_failed}
        ref = fit_afm_files(folder / "fmt-jpk-fd_spot3-0192.jpk-force", AFMFitConfig(
            preprocessing=["compute_tip_position"], contact_point_initial_um=18.0, weight_contact_point_um=0.0,
            rate_quality=False)).table.iloc[0]
        out["reference"] = {"file": "fmt-jpk-fd_spot3-0192.jpk-force", "nanite_test_e_pa": 14741.958242422093,
                            "mechanoscope_e_pa": round(float(ref.youngs_modulus_pa), 3),
                            "difference_pa": round(float(ref.youngs_modulus_pa) - 14741.958242422093, 3),
                            "nanite_test_tolerance_pa": 1.0,
                            "contact_point_m": float(ref.contact_point_m), "nanite_test_contact_point_m": 1.8029310201193193e-05}
    else:
        out["real_data"] = f"{REAL} absent: real-curve speed and reference not measured"
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
