"""`aceserver learn CONFIG.yaml`: active learning from seed structures (explore with the current
model, select where it extrapolates, label, refit, repeat); rerunning the same command resumes an
interrupted run. The loop is library code (`aceserver.learning`); this module parses the arguments,
calls it and prints."""
from __future__ import annotations

import sys

NAME = "learn"
HELP = "learn a potential actively: explore, select by γ, label, refit (see aceserver.learning.config)"


def add_arguments(parser):
    parser.add_argument("config", help="learning configuration (YAML); see aceserver.learning.config")
    parser.add_argument("--output", metavar="DIR", help="output directory (overrides 'output')")
    parser.add_argument("--threads", type=int, help="threads for fitting and evaluation (default: all CPUs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from pathlib import Path

    from aceserver.errors import ACEInputError
    from aceserver.fitting.active_set import ActiveSetError
    from aceserver.fitting.config import FitConfigError
    from aceserver.learning import LearnConfigError, Learner, LearnError, load_config

    try:
        cfg = load_config(args.config)
        if args.output:
            cfg.output = Path(args.output).resolve()
        result = Learner(cfg, progress=not args.quiet, threads=args.threads).run()
    except (LearnConfigError, LearnError, FitConfigError, ActiveSetError, ACEInputError, ValueError,
            OSError) as exc:
        print(f"aceserver learn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aceserver learn: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(f"{result['labels']} labelled frames over {result['iterations']} "
          f"iterations; last model {result['model']} (in {cfg.output.name}/); report in "
          f"{cfg.output.name}/report.json")
    return 0
