"""PACEPotential: a pacemaker `.yace` potential compiled to the kernels' site tables, evaluated by
the same site pass as ACEModel (radial mode 1: tabulated R_nl, densities with an embedding, core
repulsion / ZBL). Front ends cannot tell it from an ACEModel.

In an aceserver model file it is stored as the parsed `.yace` content (model "PACE"), so
`aceserver convert x.yace x.json` keeps the potential exact and adds the file's sha256 check.
"""
from __future__ import annotations

from functools import cached_property

import numpy as np

from ..errors import ACEInputError, ModelFileError
from ..io import modelfile
from .yace import YaceSpec, parse_document, read_yace
from ..kernels.pace_projections import projection_rows, projection_rows_parallel
from ..kernels.site_tables import EMBEDDING_KINDS, INNER_TYPES, SiteTables, unused
from ..evaluation.site_potential import SitePotential
from ..structure import MIN_DISTANCE, species_lookup
from .ctilde import species_dags
from .projections import projection_tables
from .radial_basis import hermite_tables

MODEL_KIND = "PACE"


class PACEPotential(SitePotential):
    """A pacemaker potential (C-tilde basis, any number of species and densities)."""

    def __init__(self, spec: YaceSpec, source_format: str = "yace", metadata=None):
        self.spec = spec
        self.source_format = source_format
        self.metadata = dict(metadata or {})
        self._lookup = species_lookup(spec.elements)

    @property
    def elements(self) -> list[str]:
        return list(self.spec.elements)

    @property
    def rcut(self) -> float:
        """Largest pair cut-off, Å (each species pair uses its own, see `cutoffs`)."""
        return max(b.rcut for b in self.spec.bonds.values())

    @property
    def cutoffs(self) -> dict[str, float]:
        el = self.spec.elements
        return {f"{el[i]}-{el[j]}": b.rcut for (i, j), b in sorted(self.spec.bonds.items())}

    @property
    def E0(self) -> dict:
        return {el: float(e) for el, e in zip(self.spec.elements, self.spec.E0)}

    @property
    def sha256(self) -> str:
        """sha256 of the original .yace file."""
        return self.spec.sha256

    @property
    def length_basis(self) -> int:
        return int(sum(len(t) for t in self.spec.functions))

    @property
    def min_distance(self) -> float:
        return max(MIN_DISTANCE, float(self._tables(False).tab_h.max()))

    def basis_rows(self, *args, **kwargs):
        raise NotImplementedError("a pacemaker potential is not linear in a parameter vector: "
                                  "basis rows (and committees, refitting) need an aceserver ACE1 model")

    @cached_property
    def _compiled(self) -> SiteTables:
        spec = self.spec
        nz = len(spec.elements)
        tab, h, rc, (N, L, K) = hermite_tables(spec)
        dag = species_dags(spec, N, L, K)
        P = dag["coef"].shape[0]
        emb_par = np.zeros((nz, P, 2))
        for z, e in enumerate(spec.embeddings):
            emb_par[z, : e.ndensity] = e.params
        zin = np.zeros((nz, nz, 2))
        for (i, j), b in spec.bonds.items():
            zin[i, j] = (b.rcut_in, b.dcut_in)
        return SiteTables(
            mode=1, e0=np.asarray(spec.E0, dtype=np.float64), lmax=L, mb_t=unused(3),
            mb_spl=unused(3), pr_t=unused(3), pair_p=0, pair_spl=unused(5), tab=tab, tab_h=h,
            tab_rc=rc, row_off=np.concatenate([np.arange(N) * (L + 1), N * (L + 1) + np.arange(K)]),
            row_lmax=np.concatenate([np.full(N, L), np.zeros(K)]).astype(np.int64),
            **dag,
            emb_kind=np.array([EMBEDDING_KINDS[e.kind] for e in spec.embeddings], dtype=np.int64),
            emb_par=emb_par,
            rho_cut=np.array([(e.rho_core_cutoff, e.drho_core_cutoff) for e in spec.embeddings]),
            inner=INNER_TYPES[spec.inner_cutoff_type], zin=zin)

    def _tables(self, committee: bool) -> SiteTables:
        return self._compiled

    # ---- descriptors: pacemaker's projections -----------------------------------------------
    @property
    def descriptor_sizes(self) -> dict[str, int]:
        """Per element: its number of projection columns, ndensity × its C-tilde functions."""
        s = self.spec
        return {el: int(e.ndensity * len(t))
                for el, e, t in zip(s.elements, s.embeddings, s.functions)}

    @cached_property
    def _projection_tables(self):
        bonds = self.spec.bonds.values()
        return projection_tables(self.spec, max(b.nradmax for b in bonds),
                                 max(b.lmax for b in bonds), max(b.nradbase for b in bonds))

    def _descriptor_rows(self, z, first, nbr, R, atoms, n_chunks=1):
        """Projection rows (len(atoms), max L_el), eV: row r = atom atoms[r], column
        p·n_functions + f = w_p F_p'(ρ_p) · Σ_ms c̃_{f,ms,p} Re ∏A (density-major, functions in
        the .yace order; see `kernels.pace_projections`). n_chunks > 1: on numba's threads."""
        atoms = np.ascontiguousarray(atoms, dtype=np.int64)
        width = max(self.descriptor_sizes.values())
        if n_chunks > 1:
            return projection_rows_parallel(atoms, first, nbr, R, z, self._compiled,
                                            self._projection_tables, width, n_chunks)
        return projection_rows(atoms, first, nbr, R, z, self._compiled, self._projection_tables,
                               width)

    def evaluate(self, *args, committee=False, committee_forces=False, **kwargs):
        if committee_forces:
            raise ACEInputError("a pacemaker potential has no committee", "committee_forces")
        return super().evaluate(*args, committee=False, **kwargs)

    # ---- description and files ---------------------------------------------------------------
    def info(self) -> dict:
        s = self.spec
        return {"format": self.source_format, "species": self.elements, "rcut": self.rcut,
                "cutoffs": self.cutoffs, "length_basis": self.length_basis, "E0": self.E0,
                "committee_size": 0, "sha256": self.sha256,
                "inner_cutoff_type": s.inner_cutoff_type,
                "radial_bases": sorted({b.radbase for b in s.bonds.values()}),
                "embeddings": [e.kind for e in s.embeddings],
                "ndensity": [e.ndensity for e in s.embeddings],
                "metadata": self.metadata, "units": modelfile.UNITS}

    def to_document(self) -> dict:
        """The aceserver model-file document: the .yace content, exactly, as plain JSON."""
        s = self.spec
        bonds = []
        for (i, j), b in sorted(s.bonds.items()):
            bonds.append({"pair": [i, j], "radbasename": b.radbase, "nradmax": b.nradmax,
                          "lmax": b.lmax, "nradbasemax": b.nradbase, "radparameters": [b.lam],
                          "radcoefficients": b.crad.tolist(), "prehc": b.prehc,
                          "lambdahc": b.lambdahc, "rcut": b.rcut, "dcut": b.dcut,
                          "rcut_in": b.rcut_in, "dcut_in": b.dcut_in,
                          "inner_cutoff_type": s.inner_cutoff_type})
        functions = {}
        for mu0, t in enumerate(s.functions):
            rows = []
            for f in range(len(t)):
                nu = int(t.rank[f])
                combs = np.flatnonzero(t.comb_owner == f)
                rows.append({"mu0": mu0, "rank": nu, "ndensity": int(t.ctildes.shape[1]),
                             "num_ms_combs": len(combs), "mus": t.mus[f, :nu].tolist(),
                             "ns": (t.ns[f, :nu] + 1).tolist(), "ls": t.ls[f, :nu].tolist(),
                             "ms_combs": t.ms[combs, :nu].reshape(-1).tolist(),
                             "ctildes": t.ctildes[combs].reshape(-1).tolist()})
            functions[str(mu0)] = rows
        return {
            "model": MODEL_KIND,
            "yace": {
                "elements": s.elements, "E0": s.E0.tolist(), "deltaSplineBins": s.delta_spline_bins,
                "embeddings": {str(z): {"ndensity": e.ndensity, "FS_parameters": e.params.reshape(-1).tolist(),
                                        "npoti": e.kind, "rho_core_cutoff": e.rho_core_cutoff,
                                        "drho_core_cutoff": e.drho_core_cutoff}
                               for z, e in enumerate(s.embeddings)},
                "bonds": bonds, "functions": functions,
            },
            "source": {"format": self.source_format, "sha256": s.sha256},
            "metadata": self.metadata,
        }

    @classmethod
    def from_document(cls, doc: dict, source="model file") -> "PACEPotential":
        try:
            y = dict(doc["yace"])
            y["embeddings"] = {int(k): v for k, v in y["embeddings"].items()}
            y["functions"] = {int(k): v for k, v in y["functions"].items()}
            y["bonds"] = {tuple(b["pair"]): {k: v for k, v in b.items() if k != "pair"}
                          for b in y["bonds"]}
            spec = parse_document(y)
            spec.sha256 = str(doc["source"]["sha256"])
            return cls(spec, source_format=str(doc["source"]["format"]),
                       metadata=doc.get("metadata") or {})
        except (KeyError, TypeError, AttributeError) as err:
            raise ModelFileError(f"{source} is inconsistent or incomplete: {err!r}") from None

    def save(self, path) -> str:
        """Write an aceserver model file (JSON); returns its sha256 (of the JSON document; the
        original .yace file's sha256 stays in info()["sha256"])."""
        return modelfile.write(path, self.to_document())


def load_yace(path) -> PACEPotential:
    """Load a pacemaker `.yace` file."""
    return PACEPotential(read_yace(path))
