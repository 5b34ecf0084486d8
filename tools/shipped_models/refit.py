"""Refit a shipped model and rewrite its card (models/<name>/README.md).

    python -m tools.shipped_models.refit Si-tiny [TiAl-tutorial ...]
    python -m tools.shipped_models.refit --card-only zuo-Cu [...]    # rewrite cards from the stored reports
    (zuo-<El> models are selected and fitted by tools.shipped_models.zuo_select; their cards by
    tools.shipped_models.zuo_cards, which --card-only calls for them)

Runs `aceserver fit models/<name>/fit.yaml` (writes the model file, report.json and parity plots
next to fit.yaml) and writes the card from the report: data (files and sha256), settings, solver,
training and validation errors, the model file's sha256, and how to reproduce.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import yaml

from aceserver.fitting.config import load_config
from aceserver.fitting.workflow import run_fit
from aceserver.loading import load_model

from .common import MODELS, active_set_line, error_rows
from .zuo_cards import write_card


def card(name: str, cfg_raw: dict, report: dict, model_file: Path, log: str) -> str:
    """The Markdown card of a model fitted from its fit.yaml (``report``: the fit report with the model
    metadata's "fit" entry under "metadata_fit")."""
    fit_yaml = f"models/{name}/fit.yaml"
    sha = hashlib.sha256(model_file.read_bytes()).hexdigest()
    meta = report.get("metadata_fit", {})
    data = meta.get("provenance", {}).get("data", [])
    lines = [f"# {name}", "", cfg_raw.get("description", ""), "",
             "## Files", "",
             f"- model: `{model_file.name}` (sha256 of the file `{sha}`"
             + (f"; model identity `{report['sha256']}`" if report.get("sha256") else "") + ")",
             *filter(None, [active_set_line(model_file)]),
             "- settings: `fit.yaml`; fit report: `report.json`; parity plots: `plots/`", "",
             "## Data", ""]
    for d in data:
        lines.append(f"- `{Path(d['file']).name}` sha256 `{d['sha256']}`")
    if any("ZuoEtAl2020" in d["file"] for d in data):
        origin = ("Origin: ACEData (ACEsuit) `minibenchmarks/ZuoEtAl2020`, converted from Y. Zuo et al., "
                  "J. Phys. Chem. A 124, 731 (2020), data of materialsvirtuallab/mlearn (BSD-3-Clause); "
                  "training split only (see models/README.md).")
    else:
        origin = "Origin: ACEData repository (ACEsuit), see `tests/data/README.md`."
    lines += ["", origin, "", "## Settings", "", "```yaml"]
    lines += yaml.safe_dump({k: cfg_raw[k] for k in ("model", "E0", "weights", "prior", "solver",
                                                     "validation_fraction", "seed") if k in cfg_raw},
                            sort_keys=False).rstrip().splitlines()
    lines += ["```", "", "## Solver", ""]
    s = report["solver"]
    lines.append(f"`{s.get('solver')}` on {report['shape'][0]} observations x {report['shape'][1]} parameters "
                 f"(length_basis {report['length_basis']}).")
    lines.append("")
    for k, v in s.items():
        if k != "solver":
            lines.append(f"- {k}: {v:.6g}" if isinstance(v, float) else f"- {k}: {v}")
    for split in ("train", "validation"):
        if split in report["errors"]:
            lines += ["", f"## {'Training' if split == 'train' else 'Validation'} errors", ""]
            lines += error_rows(report["errors"][split])
    if "validation" not in report["errors"]:
        lines += ["", "No configurations were held out (validation_fraction 0)."]
    t = report["timings_s"]
    lines += ["", "## Reproduce", "", "From the repository root:", "", "```bash",
              f"aceserver fit {fit_yaml}", f"python -m tools.shipped_models.refit {name}   # also rewrites this card", "```", "",
              f"Deterministic for the seed in fit.yaml. Timings of this fit: assembly {t.get('assembly_s', 0):.1f} s, "
              f"solve {t.get('solve_s', 0):.1f} s, error tables {t.get('errors_s', 0):.1f} s.", ""]
    return "\n".join(lines)


def refit(name: str):
    d = MODELS / name
    cfg = load_config(d / "fit.yaml")
    buf = io.StringIO()
    with redirect_stdout(buf):
        model, report = run_fit(cfg, progress=False)
    print(buf.getvalue())
    report["metadata_fit"] = model.metadata.get("fit", {})
    cfg.output_report.write_text(json.dumps({k: v for k, v in report.items() if k != "metadata_fit"}, indent=2))
    recard(name)


def recard(name: str):
    """Rewrite the card from the stored report.json, model file and selection.json (no refit)."""
    d = MODELS / name
    if (d / "selection.json").exists():          # zuo-<El>: cross-validation card
        return write_card(name.split("-", 1)[1])
    cfg = load_config(d / "fit.yaml")
    report = json.loads(cfg.output_report.read_text())
    report["metadata_fit"] = load_model(cfg.output_model).metadata.get("fit", {})
    text = card(name, cfg.raw, report, cfg.output_model, "")
    (d / "README.md").write_text(text)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.shipped_models.refit",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="model folders in models/ (default: Si-tiny TiAl-tutorial)")
    ap.add_argument("--card-only", action="store_true", help="rewrite the cards from the stored results, no fit")
    args = ap.parse_args(argv)
    if args.card_only:
        for n in args.names:
            recard(n)
    else:
        for n in args.names or ["Si-tiny", "TiAl-tutorial"]:
            refit(n)


if __name__ == "__main__":
    main()
