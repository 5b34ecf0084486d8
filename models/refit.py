"""Refit a shipped model and rewrite its card (models/<name>/README.md).

    python models/refit.py Si-tiny [TiAl-tutorial ...]
    python models/refit.py --card-only zuo-Cu [...]    # rewrite cards from the stored reports
    (zuo-<El> models are selected and fitted by models/select_zuo.py; their cards by models/zuo_cards.py)

Runs `aceserver fit models/<name>/fit.yaml` (writes the model file, report.json and parity plots
next to fit.yaml) and writes the card from the report: data (files and sha256), settings, solver,
training and validation errors, the model file's sha256, and how to reproduce.
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
from contextlib import redirect_stdout
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _fmt(v, scale, digits=4):
    return "–" if v is None else f"{v * scale:.{digits}f}"


def error_rows(errs: dict) -> list[str]:
    rows = ["| config_type | E RMSE (meV/atom) | F RMSE (eV/Å) | V RMSE (meV/atom) | E MAE (meV/atom) | F MAE (eV/Å) | V MAE (meV/atom) |",
            "|---|---|---|---|---|---|---|"]
    for ct, r in errs["rmse"].items():
        m = errs["mae"][ct]
        rows.append(f"| {ct} | {_fmt(r['E'], 1e3, 3)} | {_fmt(r['F'], 1)} | {_fmt(r['V'], 1e3, 3)} | "
                    f"{_fmt(m['E'], 1e3, 3)} | {_fmt(m['F'], 1)} | {_fmt(m['V'], 1e3, 3)} |")
    return rows


def card(name: str, cfg_raw: dict, report: dict, model_file: Path, log: str) -> str:
    fit_yaml = f"models/{name}/fit.yaml"
    sha = hashlib.sha256(model_file.read_bytes()).hexdigest()
    meta = report.get("metadata_fit", {})
    data = meta.get("provenance", {}).get("data", [])
    lines = [f"# {name}", "", cfg_raw.get("description", ""), "",
             "## Files", "",
             f"- model: `{model_file.name}` (sha256 of the file `{sha}`"
             + (f"; model identity `{report['sha256']}`" if report.get("sha256") else "") + ")",
             f"- settings: `fit.yaml`; fit report: `report.json`; parity plots: `plots/`", "",
             "## Data", ""]
    for d in data:
        lines.append(f"- `{Path(d['file']).name}` sha256 `{d['sha256']}`")
    if any("ZuoEtAl2020" in d["file"] for d in data):
        origin = ("Origin: ACEData (ACEsuit) `minibenchmarks/ZuoEtAl2020`, converted from Y. Zuo et al., "
                  "J. Phys. Chem. A 124, 731 (2020), data of materialsvirtuallab/mlearn (BSD-3-Clause); "
                  "training split only (see shared/data/README.md).")
    else:
        origin = "Origin: ACEData repository (ACEsuit), see `tests/data/README.md`."
    lines += ["", origin, "", "## Settings", "", "```yaml"]
    import yaml
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
              f"aceserver fit {fit_yaml}", f"python models/refit.py {name}   # also rewrites this card", "```", "",
              f"Deterministic for the seed in fit.yaml. Timings of this fit: assembly {t.get('assembly_s', 0):.1f} s, "
              f"solve {t.get('solve_s', 0):.1f} s, error tables {t.get('errors_s', 0):.1f} s.", ""]
    return "\n".join(lines)


def refit(name: str):
    from aceserver.commands.fit import run_fit
    from aceserver.fitting.config import load_config

    d = HERE / name
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
    import aceserver
    from aceserver.fitting.config import load_config

    d = HERE / name
    if (d / "selection.json").exists():          # zuo-<El>: cross-validation card
        from zuo_cards import write_card
        return write_card(name.split("-", 1)[1])
    cfg = load_config(d / "fit.yaml")
    report = json.loads(cfg.output_report.read_text())
    report["metadata_fit"] = aceserver.load_model(cfg.output_model).metadata.get("fit", {})
    text = card(name, cfg.raw, report, cfg.output_model, "")
    (d / "README.md").write_text(text)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--card-only":
        for n in args[1:]:
            recard(n)
    else:
        for n in args or ["Si-tiny", "TiAl-tutorial"]:
            refit(n)
