"""Analysis functions on a sparse matrix whose dense form cannot fit: run in a subprocess whose address
space is capped (resource.setrlimit) a little above what the sparse data needs, so any cells x genes
densification fails with MemoryError. The same limit is shown to refuse the dense matrix."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # 200,000 x 4,000 sparse through preprocess in a capped subprocess (~35 s of CPU): make test-all

SCRIPT = r"""
import json, resource, sys
import numpy as np, pandas as pd, scipy.sparse as sp, anndata as ad

from tissuelens.config import step_defaults
from tissuelens.factorize import metrics
from tissuelens.preprocess import preprocess
import squidpy  # noqa: F401  preprocess's spatial graph imports it: its libraries' address space is not data

N, D, NNZ, L, G = 200_000, 4_000, 2_000_000, 4, 3  # dense float32: 3.2 GB; sparse: ~25 MB
rng = np.random.default_rng(0)
rows = np.sort(rng.integers(N, size=NNZ))
cols = rng.integers(D, size=NNZ)
x = sp.csr_matrix((rng.integers(1, 20, size=NNZ).astype(np.float32), (rows, cols)), shape=(N, D))
x.sum_duplicates()
x.data[:5] = np.nan  # a few cells with non-finite expression: dropped without densifying
groups = pd.Categorical(np.array(["a", "b", "c"])[rng.integers(G, size=N)])
adata = ad.AnnData(x, obs=pd.DataFrame({"celltype": groups}, index=[f"c{i}" for i in range(N)]),
                   var=pd.DataFrame(index=[f"G{i}" for i in range(D)]))
adata.obsm["spatial"] = rng.uniform(0, 1000, size=(N, 2))

def vm_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
cap = vm_bytes() + 1_500_000_000
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
try:
    np.ones((N, D), dtype=np.float32)
    refused = False
except MemoryError:
    refused = True

settings = dict(step_defaults("preprocess"), min_counts=1, min_genes=1, min_cells=1, n_top_genes=1000)
out, qc = preprocess(adata, {"spatial": True, "group_key": "celltype"}, settings, "big.h5ad")
counts = out.layers["counts"]
f = rng.uniform(0.5, 2.0, size=(out.n_obs, L))
w = rng.uniform(0.0, 0.01, size=(out.n_vars, L))
dev = metrics.deviance(counts, f, w, chunk_size=4096)
rec = metrics.reconstruction_error(counts, f, w, chunk_size=4096)
gw = metrics.group_loadings(counts, f, w, out.obs["group"].cat.codes.to_numpy(), G, 20, 0)
print("RESULT=" + json.dumps({"refused": refused, "n_obs": out.n_obs, "n_vars": out.n_vars, "sparse": sp.issparse(out.X),
                              "nan_removed": qc["cells_removed"]["nan_expression"], "removed": sum(qc["cells_removed"].values()), "hvg": int(out.var["highly_variable"].sum()),
                              "dev": dev["mean"], "rec": rec, "gw_shape": list(gw.shape), "gw_finite": bool(np.isfinite(gw).all())}))
"""


def test_preprocess_and_factor_metrics_never_densify():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=900,
                          cwd=REPO, env={"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT="))[7:])
    assert res["refused"] is True  # the cap is real: the dense matrix does not fit under it
    assert res["sparse"] is True and res["n_vars"] == 4000 and res["hvg"] == 1000
    assert 1 <= res["nan_removed"] <= 5 and res["n_obs"] == 200_000 - res["removed"]
    assert res["dev"] > 0 and 0 < res["rec"] < 10
    assert res["gw_shape"] == [3, 4000, 4] and res["gw_finite"]
