"""Tahoe-x1 attention paths on one GPU: flash-attn against llm-foundry's torch attention (our masked
encoder, tissuelens.models.tahoe), the same tiny random ComposerTX, the same padded batches.

    python bench/tahoe_attention.py          # in the Tahoe container or workflow/envs/tahoe.yaml, on a GPU

Prints one line per path and `tahoe-attention: ok|FAILED ...`. Exits 0 with `skipped: ...` where
tahoe-x1, flash-attn or CUDA is missing (`make gpu-check` runs it with TAHOE_PYTHON, default the
main venv's python, which has no tahoe-x1). Exit 1 when the paths disagree: bf16 cell embeddings
(L2-normalised) differing by more than --tol, or a padded batch differing from each cell alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=64)
    ap.add_argument("--tol", type=float, default=0.03, help="max |flash - torch| of bf16 L2-normalised embeddings")
    ap.add_argument("--impls", default="flash,torch", help="attention implementations to compare (torch alone: a CPU dry run)")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    impls = args.impls.split(",")
    missing = [m for m in ("torch", "tahoe_x1") + (("flash_attn",) if "flash" in impls else ()) if importlib.util.find_spec(m) is None]
    if missing:
        print(f"skipped: {', '.join(missing)} not importable by {sys.executable}")
        return 0
    import numpy as np
    import scipy.sparse as sp
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("skipped: no CUDA device")
        return 0
    from tissuelens.embed.tahoe.encode import embed_cells
    from tissuelens.embed.tahoe.prepare import prepare_cells
    from tissuelens.models.tahoe import build_random, load_checkpoint

    genes = [f"ENSG{i:011d}" for i in range(500)]
    rng = np.random.default_rng(0)
    counts = sp.random(args.cells, len(genes), density=0.2, random_state=0, data_rvs=lambda n: rng.integers(1, 50, n)).tocsr()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = load_checkpoint(build_random(Path(tmp) / "tiny", genes, n_layers=2, d_model=64, n_heads=4, seed=0))
        ids = np.array([ckpt.vocab[g] for g in genes])
        prepared = prepare_cells(counts, ids, cls_id=ckpt.vocab["<cls>"], max_length=256)
        device = torch.device(args.device)
        emb = {}
        for impl in impls:
            model = ckpt.load_model(device, impl)
            for bs in (16, 1):
                emb[impl, bs] = embed_cells(model, prepared, pad_token_id=0, pad_value=-2, layers=[1], device=device,
                                            batch_size=bs, precision="amp_bf16", progress=False)
    worst = 0.0
    for (impl, bs), e in emb.items():
        diff = float(np.abs(e - emb["torch", 1]).max())
        worst = max(worst, diff)
        print(f"{impl:5s} batch {bs:2d}: max |emb - torch alone| = {diff:.2e}")
    ok = worst <= args.tol
    print(f"tahoe-attention: {'ok' if ok else 'FAILED'} (worst {worst:.2e}, tol {args.tol}, {args.cells} cells, "
          f"lengths {int(prepared.lengths.min())}-{int(prepared.lengths.max())})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
