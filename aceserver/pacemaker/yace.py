"""The pacemaker `.yace` format (the C-tilde ACE basis as YAML; units eV, Å): the one reader,
`read_yace` (parsed and checked into a YaceSpec of plain Python/numpy data, every problem a
ModelFileError naming the key), and the one writer, `write_yace` (used by `aceserver convert` for
pacemaker potentials and by the ace1 export; floats written so that they read back exactly).

The YAML keys bonds by `[i, j]` flow sequences, which a plain safe loader rejects ("unhashable
key"); a safe loader with a mapping constructor that turns list keys into tuples reads them
without unsafe loading. The `functions` section (almost all of a big file) is written by yaml-cpp
as one flow mapping per line; those lines are turned into JSON and parsed in C, so a 35 MB file
reads in seconds. Anything that does not fit that shape goes through the YAML loader instead.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from ase.data import chemical_symbols

from ..errors import ModelFileError

RADIAL_BASES = ("ChebExpCos", "ChebPow", "ChebLinear", "SBessel")
EMBEDDINGS = ("FinnisSinclair", "FinnisSinclairShiftedScaled")
INNER_CUTOFFS = ("density", "distance", "zbl")


class _TupleKeyLoader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):
    """Safe loader that accepts flow-sequence mapping keys ([0, 1]:) as tuples."""


def _mapping(loader, node):
    pairs = loader.construct_pairs(node, deep=True)
    return {(tuple(k) if isinstance(k, list) else k): v for k, v in pairs}


_TupleKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


@dataclass
class Bond:
    radbase: str
    nradmax: int                 # N: radial functions R_nl, n < N
    lmax: int
    nradbase: int                # K: basis functions g_k (rank-1 functions use them directly)
    lam: float                   # radparameters[0]
    crad: np.ndarray             # (N, lmax+1, K) radcoefficients[n][l][k]
    prehc: float
    lambdahc: float
    rcut: float                  # Å
    dcut: float                  # Å
    rcut_in: float               # Å
    dcut_in: float               # Å


@dataclass
class Embedding:
    kind: str                    # one of EMBEDDINGS
    ndensity: int
    params: np.ndarray           # (ndensity, 2): prefactor w_p, exponent m_p
    rho_core_cutoff: float
    drho_core_cutoff: float


@dataclass
class FunctionTable:
    """The C-tilde basis functions of one central species, as columns. Function f has rank ν_f,
    neighbour species mus[f, :ν], radial indices ns[f, :ν] (0-based here; the file's are
    1-based), ls[f, :ν] (padding -1); its m-combinations are the rows s with comb_owner[s] = f,
    ms[s, :ν] (padding 0), with real coefficients ctildes[s, :P]."""
    rank: np.ndarray
    mus: np.ndarray
    ns: np.ndarray
    ls: np.ndarray
    ms: np.ndarray
    comb_owner: np.ndarray
    ctildes: np.ndarray

    def __len__(self):
        return len(self.rank)


@dataclass
class YaceSpec:
    elements: list[str]
    E0: np.ndarray                               # (nelements,) eV
    delta_spline_bins: float                     # Å
    embeddings: list[Embedding]
    bonds: dict[tuple[int, int], Bond]
    functions: list[FunctionTable]              # per central species
    inner_cutoff_type: str
    sha256: str = ""
    extra: dict = field(default_factory=dict)


def _fail(where: str, problem: str):
    raise ModelFileError(f".yace {where}: {problem}")


def _get(d, key, where, cast=None, default=...):
    if not isinstance(d, dict):
        _fail(where, f"must be a mapping, got {type(d).__name__}")
    if key not in d:
        if default is not ...:
            return default
        _fail(f"{where}.{key}", "missing (required key)")
    value = d[key]
    if cast is None:
        return value
    return _cast(value, cast, f"{where}.{key}")


def _cast(value, cast, where):
    try:
        if cast is int:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))          # other writers emit integers as floats (1.0)
        if cast is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not np.isfinite(out):
                raise ValueError
            return out
    except (TypeError, ValueError):
        _fail(where, f"expected {'an integer' if cast is int else 'a finite number'}, got {value!r}")
    return cast(value)


def _array(value, where, dtype=float, ndim=1):
    try:
        a = np.array(value, dtype=dtype)
    except (TypeError, ValueError):
        _fail(where, f"expected a (nested) list of numbers, got {str(value)[:60]!r}")
    if ndim is not None and a.ndim != ndim:
        _fail(where, f"expected a {ndim}-d list, got shape {a.shape}")
    if dtype is float and not np.all(np.isfinite(a)):
        _fail(where, "contains NaN or inf")
    if dtype is int and not np.array_equal(a, np.array(value, dtype=float).astype(int)):
        _fail(where, "expected integers")
    return a


# --- the functions section ------------------------------------------------------------------
_SPECIES_LINE = re.compile(r"^ {1,8}(\d+):[ \t]*$", flags=re.MULTILINE)
_FUNCTION_KEYS = ("mu0", "rank", "ndensity", "num_ms_combs", "mus", "ns", "ls", "ms_combs", "ctildes")


def _split_functions(text: str):
    """(header text, functions text or None): the file split at its top-level `functions:`."""
    m = re.search(r"^functions:[ \t]*$", text, flags=re.MULTILINE)
    if m is None:
        return text, None
    return text[: m.start()], text[m.end():]


def _fast_functions(body: str):
    """The yaml-cpp layout (`  0:` then `    - {key: value, ...}` lines) parsed as JSON; None if
    it is not exactly that layout (the caller then uses the YAML loader)."""
    parts = _SPECIES_LINE.split(body)
    if parts[0].strip():
        return None
    out = {}
    for key, chunk in zip(parts[1::2], parts[2::2]):
        lines = [ln.strip() for ln in chunk.strip().split("\n")]
        if not all(ln.startswith("- {") and ln.endswith("}") for ln in lines):
            return None
        flow = ",".join(ln[2:] for ln in lines)
        flow = flow.replace("{mu0:", '{"mu0":')
        for k in _FUNCTION_KEYS[1:]:
            flow = flow.replace(f", {k}:", f', "{k}":')
        try:
            out[int(key)] = json.loads("[" + flow + "]")
        except ValueError:      # not plain JSON numbers (e.g. .nan) or other keys: use YAML
            return None
    return out


def _load_yaml(text: str, where: str):
    try:
        return yaml.load(text, Loader=_TupleKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ModelFileError(f"{where} is not valid YAML{at}: {problem} "
                             "(truncated or corrupted?)") from None


def read_yace(path) -> YaceSpec:
    """Parse and check a `.yace` file. Raises ModelFileError naming the key and the problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"potential file {path} does not exist") from None
    except OSError as err:
        raise ModelFileError(f"potential file {path} cannot be read: {err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFileError(f"{path} is not a text (YAML) file") from None
    header_text, body = _split_functions(text)
    doc = _load_yaml(header_text, str(path))
    if not isinstance(doc, dict):
        raise ModelFileError(f"{path} is not a .yace potential (expected a YAML mapping with "
                             "elements, E0, embeddings, bonds, functions)")
    if body is None:
        _fail("functions", "missing (required key)")
    functions = _fast_functions(body)
    if functions is None:
        functions = (_load_yaml("functions:\n" + body, str(path)) or {}).get("functions")
    doc["functions"] = functions
    spec = parse_document(doc)
    spec.sha256 = hashlib.sha256(raw).hexdigest()
    return spec


def parse_document(doc: dict) -> YaceSpec:
    """Check a loaded `.yace` mapping and turn it into a YaceSpec."""
    elements = _get(doc, "elements", "top level")
    if not isinstance(elements, list) or not elements:
        _fail("elements", "must be a non-empty list of chemical symbols")
    for e in elements:
        if e not in chemical_symbols[1:]:
            _fail("elements", f"{e!r} is not a chemical symbol")
    if len(set(elements)) != len(elements):
        _fail("elements", "lists an element twice")
    nel = len(elements)
    E0 = _array(_get(doc, "E0", "top level"), "E0")
    if E0.shape != (nel,):
        _fail("E0", f"must have one value per element ({nel}), got {E0.size}")
    delta = _get(doc, "deltaSplineBins", "top level", float)
    if not delta > 0:
        _fail("deltaSplineBins", f"must be > 0, got {delta}")
    for key in ("polypairpot", "reppot"):
        if key in doc:
            _fail(key, "ACE.jl pair potentials in .yace are not supported")
    embeddings = _parse_embeddings(_get(doc, "embeddings", "top level"), nel)
    bonds, inner = _parse_bonds(_get(doc, "bonds", "top level"), nel)
    functions = _parse_functions(doc.get("functions"), nel, embeddings, bonds)
    return YaceSpec(elements=list(elements), E0=E0, delta_spline_bins=delta, embeddings=embeddings,
                    bonds=bonds, functions=functions, inner_cutoff_type=inner)


def _parse_embeddings(section, nel) -> list[Embedding]:
    if not isinstance(section, dict):
        _fail("embeddings", "must be a mapping from species index to embedding")
    out = []
    for mu in range(nel):
        where = f"embeddings.{mu}"
        if mu not in section:
            _fail(where, "missing: every element needs an embedding")
        e = section[mu]
        kind = _get(e, "npoti", where)
        if kind not in EMBEDDINGS:
            _fail(f"{where}.npoti", f"unsupported embedding {kind!r} (supported: {', '.join(EMBEDDINGS)})")
        P = _get(e, "ndensity", where, int)
        if P < 1:
            _fail(f"{where}.ndensity", f"must be >= 1, got {P}")
        fs = _array(_get(e, "FS_parameters", where), f"{where}.FS_parameters")
        if fs.size != 2 * P:
            _fail(f"{where}.FS_parameters", f"must hold 2·ndensity = {2 * P} numbers, got {fs.size}")
        out.append(Embedding(kind=kind, ndensity=P, params=fs.reshape(P, 2),
                             rho_core_cutoff=_get(e, "rho_core_cutoff", where, float),
                             drho_core_cutoff=_get(e, "drho_core_cutoff", where, float)))
        if out[-1].drho_core_cutoff < 0:
            _fail(f"{where}.drho_core_cutoff", "must be >= 0")
    extra = set(section) - set(range(nel))
    if extra:
        _fail("embeddings", f"keys {sorted(map(str, extra))} are not species indices 0..{nel - 1}")
    return out


def _parse_bonds(section, nel):
    if not isinstance(section, dict):
        _fail("bonds", "must be a mapping from [i, j] to bond")
    bonds, inner_types = {}, set()
    for i in range(nel):
        for j in range(nel):
            where = f"bonds[{i}, {j}]"
            if (i, j) not in section:
                _fail(where, "missing: every ordered pair of elements needs a bond")
            b = section[(i, j)]
            name = _get(b, "radbasename", where)
            if not isinstance(name, str) or name not in RADIAL_BASES:
                hint = " (ACE.jl radial bases are not supported)" if str(name).startswith("ACE.jl") else ""
                _fail(f"{where}.radbasename", f"unsupported radial basis {name!r}{hint} "
                      f"(supported: {', '.join(RADIAL_BASES)})")
            N = _get(b, "nradmax", where, int)
            L = _get(b, "lmax", where, int)
            K = _get(b, "nradbasemax", where, int)
            if N < 0 or L < 0 or K < 1:
                _fail(where, f"needs nradmax >= 0, lmax >= 0, nradbasemax >= 1 (got {N}, {L}, {K})")
            rp = _array(_get(b, "radparameters", where), f"{where}.radparameters")
            if rp.size < 1:
                _fail(f"{where}.radparameters", "must hold at least one number")
            crad = _array(_get(b, "radcoefficients", where), f"{where}.radcoefficients",
                          ndim=None).reshape(-1)
            if crad.size != N * (L + 1) * K:
                _fail(f"{where}.radcoefficients", f"must have shape [nradmax={N}][lmax+1={L + 1}]"
                      f"[nradbasemax={K}], got {crad.size} numbers")
            kind = _get(b, "inner_cutoff_type", where, default="density")
            if kind not in INNER_CUTOFFS:
                _fail(f"{where}.inner_cutoff_type", f"unsupported inner cutoff type {kind!r} "
                      f"(supported: {', '.join(INNER_CUTOFFS)})")
            inner_types.add(kind)
            bond = Bond(radbase=name, nradmax=N, lmax=L, nradbase=K, lam=float(rp[0]),
                        crad=crad.reshape(N, L + 1, K), prehc=_get(b, "prehc", where, float),
                        lambdahc=_get(b, "lambdahc", where, float), rcut=_get(b, "rcut", where, float),
                        dcut=_get(b, "dcut", where, float),
                        rcut_in=_get(b, "rcut_in", where, float, default=0.0),
                        dcut_in=_get(b, "dcut_in", where, float, default=0.0))
            if not bond.rcut > 0:
                _fail(f"{where}.rcut", f"must be > 0, got {bond.rcut}")
            if bond.dcut < 0 or bond.dcut_in < 0 or bond.rcut_in < 0:
                _fail(where, "dcut, rcut_in and dcut_in must be >= 0")
            if kind == "zbl" and not bond.dcut_in > 0:
                _fail(f"{where}.dcut_in", "must be > 0 with inner_cutoff_type zbl (a zero-width ACE-ZBL "
                      "switch makes the energy discontinuous)")
            if kind == "zbl" and not bond.dcut > 0:
                _fail(f"{where}.dcut", "must be > 0 with inner_cutoff_type zbl (width of the ZBL tail)")
            if name == "ChebExpCos" and not bond.dcut > 0:
                _fail(f"{where}.dcut", "must be > 0 for ChebExpCos (width of its outer cosine cutoff)")
            if kind == "distance" and not bond.dcut_in > 0 and bond.rcut_in > 0:
                _fail(f"{where}.dcut_in", "must be > 0 with inner_cutoff_type distance")
            bonds[(i, j)] = bond
    if len(inner_types) > 1:
        _fail("bonds", f"mix inner_cutoff_type values {sorted(inner_types)}; one file must use one")
    extra = [k for k in section if not (isinstance(k, tuple) and len(k) == 2 and k in bonds)]
    if extra:
        _fail("bonds", f"keys {[str(k) for k in extra][:5]} are not pairs [i, j] of species indices")
    return bonds, inner_types.pop()


def _parse_functions(section, nel, embeddings, bonds) -> list[FunctionTable]:
    if not isinstance(section, dict):
        _fail("functions", "must be a mapping from species index to a list of functions")
    extra = set(section) - set(range(nel))
    if extra:
        _fail("functions", f"keys {sorted(map(str, extra))} are not species indices 0..{nel - 1}")
    return [_species_functions(section.get(mu0) or [], mu0, nel, embeddings[mu0].ndensity, bonds)
            for mu0 in range(nel)]


def _species_functions(funcs, mu0, nel, P, bonds) -> FunctionTable:
    """Checks in bulk (numpy over all functions of the species), so that big files stay fast;
    a failed check is then located and reported for the first function at fault."""
    if not isinstance(funcs, list):
        _fail(f"functions.{mu0}", "must be a list of basis functions")
    cols = {k: [] for k in _FUNCTION_KEYS}
    for k, f in enumerate(funcs):
        if not isinstance(f, dict):
            _fail(f"functions.{mu0}[{k}]", "must be a mapping")
        for key in _FUNCTION_KEYS:
            try:
                cols[key].append(f[key])
            except KeyError:
                _fail(f"functions.{mu0}[{k}].{key}", "missing (required key)")
    n_f = len(funcs)
    if n_f == 0:
        e = np.zeros((0, 1), dtype=np.int64)
        return FunctionTable(rank=np.zeros(0, dtype=np.int64), mus=e, ns=e, ls=e, ms=e,
                             comb_owner=np.zeros(0, dtype=np.int64), ctildes=np.zeros((0, P)))
    scalars = {}
    for key in ("mu0", "rank", "ndensity", "num_ms_combs"):
        try:
            a = np.array(cols[key], dtype=float)
            bad = np.flatnonzero(~np.isfinite(a) | (a != np.round(a)))
        except (TypeError, ValueError):
            bad = [next(i for i, v in enumerate(cols[key]) if not isinstance(v, (int, float)))]
        if len(bad):
            _fail(f"functions.{mu0}[{bad[0]}].{key}", f"expected an integer, got {cols[key][bad[0]]!r}")
        scalars[key] = a.astype(np.int64)
    rank, M = scalars["rank"], scalars["num_ms_combs"]

    def first(mask, key, problem):
        bad = np.flatnonzero(mask)
        if len(bad):
            _fail(f"functions.{mu0}[{bad[0]}].{key}", problem.format(bad=bad[0]))

    first(scalars["mu0"] != mu0, "mu0", f"differs from the species {mu0} it is listed under")
    first(scalars["ndensity"] != P, "ndensity", f"must equal the embedding's ndensity {P}")
    first(rank < 1, "rank", "must be >= 1")
    first(M < 1, "num_ms_combs", "must be >= 1")
    flat = {}
    for key, size, dtype in (("mus", rank, int), ("ns", rank, int), ("ls", rank, int),
                             ("ms_combs", M * rank, int), ("ctildes", M * P, float)):
        lists = cols[key]
        lens = np.array([len(v) if isinstance(v, list) else -1 for v in lists])
        first(lens != size, key, "has the wrong length (rank, num_ms_combs·rank or "
              "num_ms_combs·ndensity values expected)")
        try:
            a = np.array([x for v in lists for x in v], dtype=float)
        except (TypeError, ValueError):
            _fail(f"functions.{mu0}.{key}", "holds something that is not a number")
        owner = np.repeat(np.arange(n_f), lens)
        first(np.isin(np.arange(n_f), owner[~np.isfinite(a)]), key, "holds NaN or inf")
        if dtype is int:
            first(np.isin(np.arange(n_f), owner[a != np.round(a)]), key, "must hold integers")
            a = a.astype(np.int64)
        flat[key] = (a, np.concatenate([[0], np.cumsum(lens)]))
    mus, ns, ls = flat["mus"][0], flat["ns"][0], flat["ls"][0]
    owner = np.repeat(np.arange(n_f), rank)
    first(np.isin(np.arange(n_f), owner[(mus < 0) | (mus >= nel)]), "mus",
          f"species index out of range 0..{nel - 1}")
    r1 = rank[owner] == 1
    first(np.isin(np.arange(n_f), owner[r1 & (ls != 0)]), "ls", "must be [0] for a rank-1 function")
    n_max = np.zeros(len(mus), dtype=np.int64)
    l_max = np.zeros(len(mus), dtype=np.int64)
    for (i, j), b in bonds.items():
        if i == mu0:
            sel = mus == j
            n_max[sel] = np.where(r1[sel], b.nradbase, b.nradmax)
            l_max[sel] = b.lmax
    first(np.isin(np.arange(n_f), owner[(ns < 1) | (ns > n_max)]), "ns",
          "radial index out of range 1..nradbasemax (rank 1) or 1..nradmax (rank >= 2) of its bond")
    first(np.isin(np.arange(n_f), owner[ls > l_max]), "ls", "l exceeds the lmax of its bond")
    ms_all, ms_ptr = flat["ms_combs"]
    owner_m = np.repeat(np.arange(n_f), M * rank)
    pos = np.arange(len(ms_all)) - ms_ptr[owner_m]
    t = pos % rank[owner_m]
    l_of = ls[flat["ls"][1][owner_m] + t]
    first(np.isin(np.arange(n_f), owner_m[np.abs(ms_all) > l_of]), "ms_combs", "needs |m_t| <= l_t")
    comb = np.repeat(np.arange(int(M.sum())), np.repeat(rank, M))
    msum = np.bincount(comb, weights=ms_all, minlength=int(M.sum()))
    comb_owner = np.repeat(np.arange(n_f), M)
    first(np.isin(np.arange(n_f), comb_owner[msum != 0]), "ms_combs",
          "needs Σ_t m_t = 0 in every combination")
    rmax = int(rank.max())
    pad = np.full((n_f, rmax), -1, dtype=np.int64)
    col = np.arange(len(mus)) - flat["mus"][1][owner]
    table = FunctionTable(rank=rank, mus=pad.copy(), ns=pad.copy(), ls=pad.copy(),
                          ms=np.zeros((int(M.sum()), rmax), dtype=np.int64), comb_owner=comb_owner,
                          ctildes=flat["ctildes"][0].reshape(-1, P))
    table.mus[owner, col] = mus
    table.ns[owner, col] = ns - 1
    table.ls[owner, col] = ls
    table.ms[comb, t] = ms_all
    return table


# --- the writer -------------------------------------------------------------------------------
# yaml-cpp (pyace, ML-PACE) is strict: integers as integers. PyYAML reads a float only with a '.'
# in it ("1e-08" is a string there). Floats: Python's shortest repr, which reads back exactly.
def _float(x) -> str:
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"cannot write a non-finite number ({x}) to a .yace file")
    s = repr(x)
    if "e" in s and "." not in s.split("e")[0]:
        mant, exp = s.split("e")
        s = f"{mant}.0e{exp}"
    if "e" in s and s.split("e")[1][0] not in "+-":
        mant, exp = s.split("e")
        s = f"{mant}e+{exp}"
    return s


def _floats(xs) -> str:
    """A flow list of floats; nested for a multi-dimensional array."""
    a = np.asarray(xs, dtype=float)
    if a.ndim > 1:
        return "[" + ", ".join(_floats(row) for row in a) + "]"
    return "[" + ", ".join(_float(x) for x in a) + "]"


def _ints(xs) -> str:
    return "[" + ", ".join(str(int(x)) for x in xs) + "]"


def _string(s) -> str:
    s = str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{s}"'


def _metadata_lines(meta: dict, indent: int) -> list[str]:
    """Plain nested mapping -> block YAML (strings quoted, numbers as numbers)."""
    lines = []
    pad = " " * indent
    for key, value in meta.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            lines.extend(_metadata_lines(value, indent + 2))
        elif isinstance(value, bool):
            lines.append(f"{pad}{key}: {'true' if value else 'false'}")
        elif isinstance(value, (int, np.integer)):
            lines.append(f"{pad}{key}: {int(value)}")
        elif isinstance(value, (float, np.floating)):
            lines.append(f"{pad}{key}: {_float(value)}")
        elif isinstance(value, (list, tuple)):
            items = [(_float(v) if isinstance(v, (float, np.floating)) else
                      str(int(v)) if isinstance(v, (int, np.integer)) else _string(v)) for v in value]
            lines.append(f"{pad}{key}: [{', '.join(items)}]")
        elif value is None:
            lines.append(f"{pad}{key}: null")
        else:
            lines.append(f"{pad}{key}: {_string(value)}")
    return lines


def render_yace(spec: YaceSpec, metadata: dict | None = None) -> str:
    """The .yace text of a YaceSpec: keys in pacemaker's order, one flow mapping per embedding,
    bond and function (the layout `read_yace` parses fast), then `metadata` if given (our own
    key: pyace, ML-PACE and `read_yace` ignore it)."""
    lines = [f"elements: [{', '.join(_string(e) for e in spec.elements)}]",
             f"E0: {_floats(spec.E0)}", f"deltaSplineBins: {_float(spec.delta_spline_bins)}",
             "embeddings:"]
    for z, e in enumerate(spec.embeddings):
        lines.append(f"  {z}: {{ndensity: {e.ndensity}, FS_parameters: {_floats(e.params.reshape(-1))}, "
                     f"npoti: {e.kind}, rho_core_cutoff: {_float(e.rho_core_cutoff)}, "
                     f"drho_core_cutoff: {_float(e.drho_core_cutoff)}}}")
    lines.append("bonds:")
    for (i, j), b in sorted(spec.bonds.items()):
        lines.append(f"  [{i}, {j}]: {{nradmax: {b.nradmax}, lmax: {b.lmax}, nradbasemax: {b.nradbase}, "
                     f"radbasename: {b.radbase}, radparameters: {_floats([b.lam])}, "
                     f"radcoefficients: {_floats(b.crad)}, prehc: {_float(b.prehc)}, "
                     f"lambdahc: {_float(b.lambdahc)}, rcut: {_float(b.rcut)}, dcut: {_float(b.dcut)}, "
                     f"rcut_in: {_float(b.rcut_in)}, dcut_in: {_float(b.dcut_in)}, "
                     f"inner_cutoff_type: {spec.inner_cutoff_type}}}")
    lines.append("functions:")
    for mu0, t in enumerate(spec.functions):
        if not len(t):
            lines.append(f"  {mu0}: []")
            continue
        lines.append(f"  {mu0}:")
        starts = np.searchsorted(t.comb_owner, np.arange(len(t) + 1))
        for f in range(len(t)):
            nu = int(t.rank[f])
            s0, s1 = starts[f], starts[f + 1]
            lines.append(
                f"    - {{mu0: {mu0}, rank: {nu}, ndensity: {t.ctildes.shape[1]}, num_ms_combs: {s1 - s0}, "
                f"mus: {_ints(t.mus[f, :nu])}, ns: {_ints(t.ns[f, :nu] + 1)}, "
                f"ls: {_ints(t.ls[f, :nu])}, ms_combs: {_ints(t.ms[s0:s1, :nu].reshape(-1))}, "
                f"ctildes: {_floats(t.ctildes[s0:s1].reshape(-1))}}}")
    if metadata is not None:
        lines.append("metadata:")
        lines.extend(_metadata_lines(metadata, 2))
    return "\n".join(lines) + "\n"


def write_yace(spec: YaceSpec, path, metadata: dict | None = None) -> str:
    """Write a YaceSpec as a `.yace` file in pacemaker's layout (readable by pyace, LAMMPS
    ML-PACE and `read_yace`), with `metadata` if given; returns the file's sha256."""
    data = render_yace(spec, metadata).encode("utf-8")
    Path(path).write_bytes(data)
    return hashlib.sha256(data).hexdigest()
