"""`aceserver jobs submit|list|watch|fetch|cancel`: relaxations and MD runs on a running
`aceserver serve --jobs-dir` server, through the `aceclient` package (pip install ./client)."""
from __future__ import annotations

import argparse
import json
import sys

NAME = "jobs"
HELP = "run relaxations and MD on a server (aceserver serve --jobs-dir): submit, list, watch, fetch, cancel"


def _value(text: str):
    """KEY=VALUE values: JSON where it parses (numbers, true/false), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(items: list[str] | None, flag: str) -> dict:
    out = {}
    for item in items or ():
        if "=" not in item:
            raise SystemExit(f"aceserver jobs: {flag} takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = _value(value)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default http://127.0.0.1:8000)")
    common.add_argument("--token-file", metavar="F", help="file holding the server's bearer token")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("submit", parents=[common], help="start a job per structure of a file (relax_many: one job "
                       "for all); prints the ids")
    p.add_argument("structures", metavar="FILE", help="structure file ASE can read (all its frames: one job each, "
                   "or one relax_many job)")
    p.add_argument("--kind", choices=["relax", "md", "relax_many"], help="relax, md or relax_many (every frame of "
                   "FILE relaxed in one batched job) (or from --spec)")
    p.add_argument("--spec", metavar="FILE", help="JSON or YAML job spec: kind, parameters, write_every, "
                   "check_every, halt, record (flags override it)")
    p.add_argument("--model", help="served model name (default: the server's default)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="a parameter, e.g. steps=2000 timestep_fs=1 temperature_K=300 seed=1 (md); fmax=0.01 "
                        "optimizer=FIRE cell_filter=true (relax); repeatable")
    p.add_argument("--halt", action="append", metavar="KEY=VALUE",
                   help="halt condition: max_force=eV/Å, max_energy_std=eV, max_gamma=γ; repeatable")
    p.add_argument("--write-every", type=int, metavar="N", help="write a frame every N steps")
    p.add_argument("--check-every", type=int, metavar="N", help="check the halt conditions every N steps")
    p.add_argument("--record", action="append", choices=["energy_std", "gamma"], help="extra per-frame values")
    p = sub.add_parser("list", parents=[common], help="list jobs, newest first")
    p.add_argument("--state", choices=["queued", "running", "done", "halted", "failed", "cancelled", "interrupted"])
    p.add_argument("--limit", type=int, default=50)
    p = sub.add_parser("watch", parents=[common], help="print each frame of a job as it comes, until it ends")
    p.add_argument("job", metavar="ID")
    p = sub.add_parser("fetch", parents=[common], help="save a finished job's trajectory (.traj or .xyz)")
    p.add_argument("job", metavar="ID")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="FILE.traj (ASE trajectory) or FILE.xyz / FILE.extxyz (extended XYZ)")
    p = sub.add_parser("cancel", parents=[common], help="cancel a job")
    p.add_argument("job", metavar="ID")


def _spec(args) -> dict:
    spec: dict = {}
    if args.spec:
        import yaml

        with open(args.spec, encoding="utf-8") as fh:
            spec = yaml.safe_load(fh) or {}
        if not isinstance(spec, dict):
            raise SystemExit(f"aceserver jobs: {args.spec} does not hold a mapping")
    if args.kind:
        spec["kind"] = args.kind
    spec.setdefault("parameters", {}).update(_pairs(args.param, "--param"))
    if args.halt:
        spec.setdefault("halt", {}).update(_pairs(args.halt, "--halt"))
    for key in ("write_every", "check_every", "record"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    if "kind" not in spec:
        raise SystemExit("aceserver jobs submit: give --kind relax|md|relax_many (or `kind` in --spec)")
    return spec


def run(args: argparse.Namespace) -> int:
    try:
        from aceclient import ACEJobs, ACEServerError
    except ImportError:
        print("aceserver jobs: needs the aceclient package (pip install ./client)", file=sys.stderr)
        return 2
    token = None
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as fh:
            token = fh.read().strip()
    jobs = ACEJobs(args.url, token)
    try:
        if args.action == "submit":
            from ase.io import read

            spec = _spec(args)
            images = read(args.structures, index=":")
            ids = jobs.submit(images, spec.pop("kind"), model=args.model, **spec)
            print("\n".join(ids))
        elif args.action == "list":
            print(f"{'id':16}  {'kind':10}  {'state':11}  {'step':>9}  {'frames':>7}  model")
            for j in jobs.list(args.state, args.limit):
                print(f"{j['id']:16}  {j['kind']:10}  {j['state']:11}  {j['step']:>9}  {j['frames']:>7}  {j['model']}")
        elif args.action == "watch":
            print(f"{'step':>9}  {'time/fs':>10}  {'E_pot/eV':>16}  {'E_kin/eV':>12}  {'T/K':>9}  {'max F/(eV/Å)':>12}")
            for a in jobs.frames(args.job):
                info = a.info
                t = f"{info['time_fs']:10.2f}" if "time_fs" in info else f"{'':10}"
                ek = f"{info['kinetic_energy']:12.6f}" if "kinetic_energy" in info else f"{'':12}"
                temp = f"{info['temperature_K']:9.2f}" if "temperature_K" in info else f"{'':9}"
                print(f"{info['step']:9d}  {t}  {a.get_potential_energy():16.6f}  {ek}  {temp}  "
                      f"{info['max_force']:12.6f}", flush=True)
            status = jobs.status(args.job)
            print(f"job {args.job}: {status['state']}" + (f" ({status['reason']})" if status.get("reason") else "")
                  + (f": {status['error']['message']}" if status.get("error") else ""))
            return 0 if status["state"] in ("done", "halted") else 1
        elif args.action == "fetch":
            fmt = "traj" if args.output.endswith(".traj") else "extxyz"
            data = jobs.download(args.job, fmt)
            with open(args.output, "wb") as fh:
                fh.write(data)
            print(f"aceserver jobs: wrote {args.output} ({len(data)} bytes, {fmt})", file=sys.stderr)
        elif args.action == "cancel":
            status = jobs.cancel(args.job)
            print(f"job {args.job}: {status['state']}")
    except ACEServerError as ex:
        print(f"aceserver jobs: {ex}", file=sys.stderr)
        return 1
    finally:
        jobs.close()
    return 0
