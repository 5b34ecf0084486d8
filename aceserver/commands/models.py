"""`aceserver models`: the shipped models, what they are, and where they were found."""
from __future__ import annotations

import argparse
import json
import sys

NAME = "models"
HELP = "list the shipped models (species, cutoff, basis size, sha256) and the file each was found in"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def run(args: argparse.Namespace) -> int:
    from aceserver.catalogue import listing

    found = listing()
    rows, default = found["models"], found["default"]
    if args.json:
        print(json.dumps(found, indent=1, ensure_ascii=False))
        return 0 if rows else 1
    print("searched: " + ", ".join(found["searched"]))
    if not rows:
        print("no shipped models found", file=sys.stderr)
        return 1
    print(f"{'name':<16} {'species':<10} {'rcut/Å':>7} {'basis':>6} {'committee':>9}  {'sha256':<12}  file")
    for r in rows:
        mark = "*" if r["name"] == default else " "
        if "error" in r:
            print(f"{r['name']:<15}{mark} cannot be loaded: {r['error']}  {r['path']}")
            continue
        print(f"{r['name']:<15}{mark} {','.join(r['species']):<10} {r['rcut']:>7.2f} {r['length_basis']:>6} "
              f"{r['committee_size']:>9}  {r['sha256'][:12]}  {r['path']}")
    print("* default model of `aceserver serve`")
    return 0
