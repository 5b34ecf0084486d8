"""`aceserver ipi`: run a model as an i-PI socket driver (also the client of ASE's SocketIOCalculator)."""
from __future__ import annotations

import argparse
import logging
import signal

NAME = "ipi"
HELP = "serve a model to i-PI (or ASE's SocketIOCalculator) over a unix or TCP socket"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model file")
    parser.add_argument("--structure", required=True, metavar="FILE",
                        help="structure with the server's atoms in the server's order (any ASE format; "
                             "the first frame is used): the protocol sends positions, never species")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix", metavar="NAME", help="unix socket: connect to PREFIX+NAME")
    where.add_argument("--inet", metavar="HOST:PORT", help="TCP socket")
    parser.add_argument("--socket-prefix", default="/tmp/ipi_", metavar="PREFIX",
                        help="prefix of the unix socket path, as i-PI's sockets_prefix (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=1, metavar="N",
                        help="connections served in parallel by this process (default: %(default)s)")
    parser.add_argument("--reconnect", action="store_true",
                        help="when the server goes away without EXIT, stalls inside a message, or sends a structure that "
                             "fails to evaluate, connect again (a wrong atom count is never retried)")
    parser.add_argument("--connect-timeout", type=float, default=600.0, metavar="SECONDS",
                        help="give up if no server appears within this time; 'inf' waits forever "
                             "(default: %(default)s)")
    parser.add_argument("--read-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="end a connection whose server stops for this long in the middle of a message, "
                             "or stops reading our reply; between messages the driver waits as long as the "
                             "server needs; 'inf' never ends one (default: %(default)s)")
    parser.add_argument("--keepalive", type=float, default=60.0, metavar="SECONDS",
                        help="TCP only: after this long without traffic, probe the server's host every "
                             "min(SECONDS, 10) s and end the connection after 6 unanswered probes; "
                             "0 turns it off (default: %(default)s)")
    parser.add_argument("--no-guard", action="store_true",
                        help="do not start the small watchdog process that closes the connections cleanly "
                             "if this process is killed (without it, SIGKILL can hang i-PI 3.3)")
    parser.add_argument("--extras", default="committee", metavar="LIST",
                        help="comma-separated extras to send as a JSON object: 'committee' (committee_pot "
                             "and committee_uncertainty, Hartree; only if the model has a committee), "
                             "'energies' (per-atom energies, Hartree; costs ~0.3 µs per atom per call), "
                             "'gamma' (per-atom extrapolation grade gamma and max_gamma, dimensionless; needs "
                             "an active set), 'max_gamma' (only the largest), 'energies_std' (Hartree) and "
                             "'forces_std' (Hartree/Bohr): per-atom committee spreads, "
                             "or 'none' (default: %(default)s)")
    parser.add_argument("--gamma-every", type=int, default=None, metavar="N",
                        help="compute gamma on every N-th force call of this process only (with P beads a "
                             "step is P calls); the other calls send NaN for gamma and max_gamma. Needs "
                             "'gamma' or 'max_gamma' in --extras (default: every call)")
    parser.add_argument("--blas-threads", type=int, default=1, metavar="N",
                        help="BLAS threads of the whole process, set once at start (default 1: the "
                             "connections run in parallel threads, so more BLAS threads only compete for the "
                             "cores)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: every message)")
    parser.add_argument("-q", "--quiet", action="store_true", help="log errors only")


def run(args: argparse.Namespace) -> int:
    level = logging.ERROR if args.quiet else logging.DEBUG if args.verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s aceserver ipi: %(message)s")
    log = logging.getLogger("aceserver.ipi")

    import ase.io

    from aceserver import load_model
    from aceserver.errors import ACEInputError, ModelFileError
    from aceserver.serving import process
    from aceserver.serving.ipi import ACEPotential, Address, Driver

    try:      # once, from the main thread, before the connection threads start (serving.process says why)
        blas = process.set_blas_threads(args.blas_threads)
    except ValueError as exc:
        log.error("--blas-threads: %s", exc)
        return 2
    log.info("BLAS threads %d (%s)", args.blas_threads, process.describe_blas(blas))
    try:
        if not args.read_timeout > 0:
            raise ValueError(f"--read-timeout must be > 0 s (or inf), got {args.read_timeout}")
        if not args.keepalive >= 0:
            raise ValueError(f"--keepalive must be >= 0 s, got {args.keepalive}")
        address = (Address.unix(args.unix, args.socket_prefix) if args.unix is not None
                   else Address.inet(args.inet))
        extras = () if args.extras.strip() == "none" else [x.strip() for x in args.extras.split(",") if x.strip()]
        atoms = ase.io.read(args.structure, index=0)
        model = load_model(args.model)
        if args.gamma_every is not None and not {"gamma", "max_gamma"} & set(extras):
            raise ValueError("--gamma-every needs 'gamma' or 'max_gamma' in --extras "
                             "(e.g. --extras committee,max_gamma)")
        potential = ACEPotential.from_atoms(model, atoms, extras=extras, template_name=args.structure,
                                            gamma_every=1 if args.gamma_every is None else args.gamma_every)
    except (ACEInputError, ModelFileError, ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    try:
        potential.evaluate_atoms(atoms)
    except ACEInputError as exc:
        log.error("%s: %s", args.structure, exc)
        return 2
    log.info("model %s (%s), %d atoms from %s; %d connection(s) to %s", args.model,
             ", ".join(model.elements), potential.natoms, args.structure, args.clients, address)

    driver = Driver(potential, address, clients=args.clients, reconnect=args.reconnect,
                    connect_timeout=args.connect_timeout, guard=not args.no_guard,
                    read_timeout=args.read_timeout, keepalive=args.keepalive)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: driver.stop(signal.Signals(signum).name))
    status = driver.run()
    log.info("done: %d force calls", driver.calls)
    return status
