"""The shipped zuo-<El> models are what their files say they are: the model file holds the basis
its card, fit.yaml and report describe, and the model shipped is the one the nested
cross-validation's verdict (nested_cv.json, `tools/shipped_models/zuo_nested.py`) names — the
upstream recipe where the selection procedure did not beat it, else `zuo_select`'s choice. Reads
only files in models/ (no training data)."""
import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

from aceserver.basis.bondlengths import pair_r0
from aceserver.loading import load_model

MODELS = Path(__file__).resolve().parents[1] / "models"
ELEMENTS = ("Ni", "Cu", "Li", "Mo", "Si", "Ge")
# further nested grids (tools/shipped_models/zuo_ship.py FURTHER_GRIDS) and the time ratio to the recipe
# their winner may have (the lead grids' dense bases; the sparse grids': no slower than the recipe)
FURTHER = ("transform_large_weighted", "transform_smooth", "fast", "sparse")
MAX_TIME_RATIO = {"transform_large_weighted": 1.5, "transform_smooth": 1.5}


def _deciding_runs(d):
    """The finished nested CVs that decide the further grids: per grid, its run on fresh outer folds
    (nested_cv_<grid>_seed<s>.json, the highest seed) where one is finished, else nested_cv_<grid>.json
    (tools/shipped_models/zuo_nested.py deciding_file)."""
    out = []
    for g in FURTHER:
        runs = [json.loads(f.read_text()) for f in [d / f"nested_cv_{g}.json"] + sorted(
            d.glob(f"nested_cv_{g}_seed*.json"), key=lambda f: int(f.stem.rsplit("_seed", 1)[1])) if f.exists()]
        runs = [x for x in runs if "procedure" in x]
        out += runs[-1:]
    return out


def _same(a, b):
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _basis(name):
    m = re.fullmatch(r"order (\d+), totaldegree \[([\d, ]+)\]", name)
    return int(m.group(1)), [int(x) for x in m.group(2).split(",")]


@pytest.mark.parametrize("el", ELEMENTS)
def test_zuo_model_is_the_one_the_nested_cv_verdict_names(el):
    d = MODELS / f"zuo-{el}"
    raw = yaml.safe_load((d / "fit.yaml").read_text())
    report = json.loads((d / "report.json").read_text())
    nst = json.loads((d / "nested_cv.json").read_text())
    sel = json.loads((d / "selection.json").read_text())
    model_file = d / raw["output"]["model"]
    card = (d / "README.md").read_text()
    model = load_model(model_file, active_set=False)

    # the card names this very file and model; the report was written by the fit of this file
    assert hashlib.sha256(model_file.read_bytes()).hexdigest() in card
    assert report["sha256"] == model.sha256 and model.sha256 in card
    assert report["length_basis"] == model.length_basis
    assert report["solver"]["committee_size"] == raw["solver"]["committee_size"] == 10

    further = _deciding_runs(d)
    shipped = [x for x in further if x["ship"] == "selected" and "ship_speed" in x]
    for x in further:       # a further grid's winner ships unless it is slower than its grid allows
        fs = x.get("final_selection", {})
        assert x["ship"] == "recipe" or "refused" in fs or x in shipped
    kw = {k: v for k, v in raw["model"].items() if k not in ("elements", "order", "totaldegree", "rcut")}
    if shipped:
        x = shipped[0]
        want, factor = x["final_selection"]["chosen"], x["final_selection"]["chosen"]["rcut_bond_lengths"]
        n_basis = next(r["n_basis"] for r in x["final_selection"]["results"] if _same(r["candidate"], want))
        assert x["ship_speed"]["ratio_to_recipe"] <= MAX_TIME_RATIO.get(x["grid"], 1.0)
        assert "## Why this model: nested-CV-validated" in card
        assert {k: v for k, v in raw["solver"].items() if k != "committee_size"} == (
            want["solver"] if want["solver"]["name"] != "blr" else {"name": "blr"})
        # the basis keywords (radial transform) and the RMS-force groups its weights name
        assert _same(kw, want.get("basis_kw", {}))
        assert raw["data"].get("force_groups") == (4 if "rms0" in want["weights"] else None)
    elif nst["ship"] == "recipe":
        assert kw == {} and "force_groups" not in raw["data"]
        want, factor = nst["recipe"], nst["recipe"]["rcut_bond_lengths"]
        n_basis = nst["recipe_estimate"]["n_basis"]          # the recipe's basis size in the nested CV
        assert "## Why this model: the upstream recipe" in card
    else:
        want, factor = sel["chosen"], sel["chosen"]["rcut_bond_lengths"]
        n_basis = next(r["n_basis"] for r in sel["results"] if _same(r["candidate"], sel["chosen"]))
        assert "## Why this model: the upstream recipe" not in card
    order, td = _basis(want["basis"])
    assert (raw["model"]["order"], list(raw["model"]["totaldegree"])) == (order, td)
    # rcut: factor bond lengths of the element (the tools' rcut_of); 1e-9 Å covers the YAML round trip
    assert raw["model"]["rcut"] == pytest.approx(factor * pair_r0(el, el), abs=1e-9)
    for key in ("prior", "weights", "E0"):
        assert _same(raw[key], want[key]), key
    assert model.length_basis == n_basis
