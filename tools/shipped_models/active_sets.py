"""Build the active sets (for the extrapolation grade γ) of shipped models from their training
data, as `aceserver fit` does after a fit, and add one line on it to each card.

    python -m tools.shipped_models.active_sets Si-tiny TiAl-tutorial
    python -m tools.shipped_models.active_sets --data-dir DIR zuo-Si zuo-Cu ...

The training configurations are those of the model's fit (`fit.yaml` read and split as
`aceserver fit` reads and splits them), so a held-out validation fraction stays out; the sidecar
`models/<name>/<name>.activeset.npz` is written beside the model file.
"""
from __future__ import annotations

import argparse
import time

from aceserver.fitting.config import load_config
from aceserver.fitting.workflow import fit_active_set, load_data
from aceserver.loading import load_model

from .common import MODELS, active_set_line


def build(name: str, data_dir=None) -> dict:
    d = MODELS / name
    cfg = load_config(d / "fit.yaml", data_dir=data_dir)
    train, _, _ = load_data(cfg)
    model = load_model(cfg.output_model, active_set=False)
    t = time.perf_counter()
    report = fit_active_set(model, train, cfg.output_model, cfg.train)
    report["seconds"] = time.perf_counter() - t
    if "error" not in report:
        update_card(name)
    return report


def update_card(name: str) -> None:
    """Put the card's active-set line under "## Files", after the model's line (replacing an
    older one)."""
    card = MODELS / name / "README.md"
    lines = [x for x in card.read_text().splitlines() if not x.startswith("- active set:")]
    at = next(i for i, x in enumerate(lines) if x.startswith("- model:")) + 1
    lines.insert(at, active_set_line(MODELS / name / f"{name}.json"))
    card.write_text("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.shipped_models.active_sets",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="+", help="model folders in models/")
    ap.add_argument("--data-dir", metavar="DIR", help="data directory of the zuo-* training splits")
    args = ap.parse_args(argv)
    for n in args.names:
        r = build(n, args.data_dir)
        print(n, f"{r.pop('seconds'):.1f} s", r)


if __name__ == "__main__":
    main()
