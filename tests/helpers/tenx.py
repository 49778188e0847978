"""Write real 10x Genomics files for tests: a v3 feature-barcode .h5 and a Space Ranger outs/ folder."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp
from PIL import Image


def write_10x_h5(path: Path, counts, barcodes, gene_ids, symbols, library_id="lib1", feature_types=None) -> None:
    """10x v3 HDF5: /matrix CSC of genes x barcodes plus /matrix/features."""
    csr = sp.csr_matrix(counts)  # cells x genes CSR == genes x cells CSC
    with h5py.File(path, "w") as f:
        f.attrs["library_ids"] = np.array([library_id.encode()])
        f.attrs["chemistry_description"] = b"Spatial 3' v1"
        f.attrs["software_version"] = b"spaceranger-2.0.0"
        m = f.create_group("matrix")
        m["barcodes"] = np.array([b.encode() for b in barcodes])
        m["data"] = csr.data.astype(np.int32)
        m["indices"] = csr.indices.astype(np.int64)
        m["indptr"] = csr.indptr.astype(np.int64)
        m["shape"] = np.array([csr.shape[1], csr.shape[0]], dtype=np.int32)
        feats = m.create_group("features")
        feats["_all_tag_keys"] = np.array([b"genome"])
        feats["feature_type"] = np.array([t.encode() for t in (feature_types or ["Gene Expression"] * csr.shape[1])])
        feats["genome"] = np.array([b"GRCh38"] * csr.shape[1])
        feats["id"] = np.array([g.encode() for g in gene_ids])
        feats["name"] = np.array([s.encode() for s in symbols])


def write_visium_folder(outs: Path, adata, library_id="lib1") -> None:
    """A Space Ranger 2.x outs/ folder from a synthetic AnnData (counts in X, obsm spatial, images)."""
    (outs / "spatial").mkdir(parents=True)
    barcodes = [f"AAAC{i:06d}-1" for i in range(adata.n_obs)]
    write_10x_h5(outs / "filtered_feature_bc_matrix.h5", adata.X, barcodes, adata.var["gene_ids"], adata.var_names, library_id)
    lib = next(iter(adata.uns["spatial"].values()))
    x, y = adata.obsm["spatial"].T
    rows = ["barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres"]
    rows += [f"{b},1,{r},{c},{yy:.0f},{xx:.0f}" for b, r, c, xx, yy in zip(barcodes, adata.obs["array_row"], adata.obs["array_col"], x, y)]
    (outs / "spatial" / "tissue_positions.csv").write_text("\n".join(rows) + "\n")
    (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(lib["scalefactors"]))
    for res in ("hires", "lowres"):
        Image.fromarray(lib["images"][res]).save(outs / "spatial" / f"tissue_{res}_image.png")
