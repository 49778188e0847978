"""In-silico perturbation with Geneformer: InSilicoPerturber's arithmetic, our implementation.

Sequence edits (perturber_utils): for a gene *set* perturbed jointly,
* `delete`: remove every member (only cells that express all members are perturbed, as upstream filters);
* `overexpress`: move the members to the front, in set order (after `<cls>` in V2), inserting the ones the
  cell lacks; the sequence is cut to the input size (`<eos>` kept last). The original is then **trimmed by
  the overflow** (len + members added - input size genes dropped from its end, `<eos>` kept) so that the
  comparison models "add X", not "add X and drop the last gene";
* `inhibit` / `activate` (InSilicoPerturber's documented meaning; upstream has not released them): each
  member moves `rank_shift` quartiles down / up the cell's gene ranking, to the middle of the target
  quartile, or to the bottom / front when it shifts past the last / first quartile.

Scores (`emb_mode`), compared on the genes present in both sequences and not perturbed:
* `cls` / `cls_and_gene`: the cell score is cos(`<cls>` perturbed, `<cls>` original); with a goal state
  the shift is cos(perturbed `<cls>`, goal) - cos(original `<cls>`, goal);
* `cell` / `cell_and_gene`: without a goal the cell score is the **mean of the per-gene cosines** (each
  unperturbed gene's embedding before vs after); with a goal the cell embeddings are the means over the
  **full** sequences' gene tokens (perturbed genes included) and the shift is as above;
* `*_and_gene` also returns every unperturbed gene's cosine (the affected-gene output).

Genes are aligned by token id (each gene appears once in a rank-value encoding), which is upstream's
positional alignment after its removal of the perturbed positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tissuelens.errors import InputError

TYPES = ("delete", "overexpress", "inhibit", "activate")
EMB_MODES = ("cls", "cell", "cls_and_gene", "cell_and_gene")


def resolve_emb_mode(emb_mode: str, special_tokens: bool, allow_mean_v2: bool = False) -> str:
    """`auto` -> cls (V2) / cell (V1), upstream's default; InputError for a mode the model cannot give."""
    if emb_mode == "auto":
        return "cls" if special_tokens else "cell"
    if emb_mode not in EMB_MODES:
        raise InputError(f"embed.perturb.emb_mode: '{emb_mode}' is not one of auto, {', '.join(EMB_MODES)}")
    if emb_mode.startswith("cls") and not special_tokens:
        raise InputError(f"embed.perturb.emb_mode: '{emb_mode}' needs a V2 checkpoint with a <cls> token; "
                         "this one is V1 (use cell or cell_and_gene)")
    if emb_mode.startswith("cell") and special_tokens and not allow_mean_v2:
        raise InputError(f"embed.perturb.emb_mode: '{emb_mode}' mean-pools a V2 model, where InSilicoPerturber "
                         "requires cls or cls_and_gene (set embed.perturb.allow_mean_v2: true to pool anyway)")
    return emb_mode


def _quartile_move(n: int, pos: int, kind: str, shift: int) -> int:
    """Target index (0-based, among n genes) of a gene at `pos` moved `shift` quartiles."""
    q = 4 * pos // n  # 0 = top quartile (highest ranks)
    t = q - shift if kind == "activate" else q + shift
    if t < 0:
        return 0
    if t > 3:
        return n - 1
    return min(int((2 * t + 1) * n / 8), n - 1)  # middle of quartile t


def perturb_sequence(seq, tokens, kind: str, special: bool, max_len: int, rank_shift: int | None = None):
    """The perturbed token sequence for a gene set, or None when the cell is not perturbed by it."""
    seq = np.asarray(seq)
    tokens = [int(t) for t in np.atleast_1d(tokens)]
    front, back = (1, 1) if special else (0, 0)
    present = np.isin(tokens, seq)
    if kind in ("delete", "inhibit", "activate") and not present.all():
        return None
    if kind == "delete":
        return seq[~np.isin(seq, tokens)]
    if kind == "overexpress":
        rest = seq[~np.isin(seq, tokens)]
        out = np.concatenate([rest[:front], tokens, rest[front:]])
        if out.size > max_len:
            out = np.concatenate([out[: max_len - back], out[out.size - back :]])
        return out.astype(seq.dtype)
    if kind in ("inhibit", "activate"):
        if rank_shift not in (1, 2, 3):
            raise InputError(f"embed.perturb.rank_shift: {kind} needs a shift of 1, 2 or 3 quartiles, not {rank_shift}")
        genes = list(seq[front : seq.size - back])
        for t in tokens:
            pos = genes.index(t)
            genes.pop(pos)
            genes.insert(_quartile_move(len(genes) + 1, pos, kind, rank_shift), t)
        return np.concatenate([seq[:front], genes, seq[seq.size - back :]]).astype(seq.dtype)
    raise InputError(f"embed.perturb.types: '{kind}' is not one of {', '.join(TYPES)}")


def trim_original(seq, tokens, kind: str, special: bool, max_len: int) -> np.ndarray:
    """The original cut by the overexpression overflow (len + members absent - input size), `<eos>` kept last."""
    seq = np.asarray(seq)
    if kind != "overexpress":
        return seq
    n_overflow = seq.size + int((~np.isin(np.atleast_1d(tokens), seq)).sum()) - max_len
    if n_overflow <= 0:
        return seq
    keep = seq.size - n_overflow
    return np.concatenate([seq[: keep - 1], seq[-1:]]) if special else seq[:keep]


def compared_positions(orig: np.ndarray, pert: np.ndarray, tokens, special_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Genes in both sequences, not perturbed, not special: (token ids, positions in orig, positions in pert)."""
    skip = np.concatenate([np.atleast_1d(tokens), list(special_ids)]).astype(orig.dtype)
    pos_o = np.flatnonzero(~np.isin(orig, skip) & np.isin(orig, pert))
    genes = orig[pos_o]
    sorter = np.argsort(pert, kind="stable")
    pos_p = sorter[np.searchsorted(pert, genes, sorter=sorter)]
    return genes, pos_o, pos_p


@dataclass(frozen=True)
class Job:
    """One sequence edit of one cell; `key` says where the result goes."""

    cell: int
    tokens: tuple
    kind: str
    key: object = None


@dataclass
class Score:
    cos_sim: float
    shift: float
    genes: np.ndarray | None = None  # affected gene tokens (gene modes)
    gene_cos: np.ndarray | None = None  # their cosines, original vs perturbed


def _cos(a, b):
    import torch

    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-8)  # torch.nn.CosineSimilarity's eps


def _score(o, p, seq_o, seq_p, tokens, emb_mode: str, special_ids, goal) -> Score:
    genes, pos_o, pos_p = compared_positions(seq_o, seq_p, tokens, special_ids)
    gene_cos = _cos(o[pos_o], p[pos_p]) if (genes.size and emb_mode != "cls") else None
    if emb_mode.startswith("cls"):
        cell_o, cell_p = o[0], p[0]
        cos = float(_cos(cell_p, cell_o))
    else:
        gene_o = ~np.isin(seq_o, list(special_ids))
        gene_p = ~np.isin(seq_p, list(special_ids))
        cell_o, cell_p = o[gene_o].mean(0), p[gene_p].mean(0)
        cos = float(gene_cos.mean()) if gene_cos is not None else float("nan")
    shift = float(_cos(cell_p, goal) - _cos(cell_o, goal)) if goal is not None else float("nan")
    if emb_mode.endswith("_and_gene") and gene_cos is not None:
        return Score(cos, shift, genes, gene_cos.cpu().numpy())
    return Score(cos, shift)


def _group_jobs(jobs: list[Job], batch_size: int):
    """Consecutive cells' jobs, at most about 2 x `batch_size` sequences (originals + perturbed) per group,
    so the hidden states held at once stay bounded; a cell with more edits is split (its original rerun)."""
    group, n = [], 0
    by_cell: dict[int, list[Job]] = {}
    for j in jobs:
        by_cell.setdefault(j.cell, []).append(j)
    step = max(batch_size - 1, 1)
    for cell_jobs in by_cell.values():
        for k in range(0, len(cell_jobs), step):
            chunk = cell_jobs[k : k + step]
            group += chunk
            n += len(chunk) + 1
            if n >= batch_size:
                yield group
                group, n = [], 0
    if group:
        yield group


def score_jobs(encoder, tokens, jobs: list[Job], *, layer: int, emb_mode: str, max_len: int, batch_size: int = 32,
               goal=None, rank_shift: int | None = None, progress: bool = False, log=None) -> list[Score | None]:
    """One Score per job (None when the edit does not apply to the cell), in job order.

    Each group of cells runs its originals (one per distinct overflow trim) and all their perturbed
    sequences through the model in length-sorted batches; every original is embedded once per group.
    """
    import torch

    from tissuelens.progress import Progress

    special_ids = set(encoder.special)
    index = {id(j): i for i, j in enumerate(jobs)}
    out: list[Score | None] = [None] * len(jobs)
    goal_t = None if goal is None else torch.as_tensor(np.asarray(goal, dtype=np.float32), device=encoder.device)
    bar = Progress(len(jobs), "perturbation", unit="edits", logger=log, enabled=progress and log is not None)
    for group in _group_jobs(jobs, batch_size):
        seqs: list[np.ndarray] = []
        slot: dict[tuple, int] = {}
        pairs = []
        for j in group:
            seq = tokens.cell(j.cell)
            new = perturb_sequence(seq, j.tokens, j.kind, tokens.special_tokens, max_len, rank_shift)
            if new is None:
                continue
            orig = trim_original(seq, j.tokens, j.kind, tokens.special_tokens, max_len)
            k = (j.cell, orig.size)
            if k not in slot:
                slot[k] = len(seqs)
                seqs.append(orig)
            seqs.append(new)
            pairs.append((j, slot[k], len(seqs) - 1))
        states: list = [None] * len(seqs)
        order = np.argsort([-s.size for s in seqs], kind="stable")
        for start in range(0, len(seqs), batch_size):
            rows = order[start : start + batch_size]
            ids, mask = encoder.pad([seqs[r] for r in rows])
            hs = encoder.hidden_states(ids, mask)[layer]
            for b, r in enumerate(rows):
                states[r] = hs[b, : seqs[r].size]
        for j, io, ip in pairs:
            out[index[id(j)]] = _score(states[io], states[ip], seqs[io], seqs[ip], j.tokens, emb_mode, special_ids, goal_t)
        bar.update(len(group))
    return out


def random_gene_sets(tokens, cells: np.ndarray, avoid, size: int, draws: int, special_ids: set, seed) -> dict[int, list]:
    """Per cell, `draws` random sets of `size` genes it expresses (none in `avoid`, no special token), seeded;
    a cell with fewer than `size` such genes gets none. The null of the same size as a tested set."""
    rng = np.random.default_rng(seed)
    avoid = set(np.atleast_1d(avoid).tolist()) | set(special_ids)
    out = {}
    for c in cells:
        seq = tokens.cell(int(c))
        choices = seq[~np.isin(seq, list(avoid))]
        if choices.size >= size:
            out[int(c)] = [tuple(int(t) for t in rng.choice(choices, size=size, replace=False)) for _ in range(draws)]
    return out


def every_gene(tokens, cells: np.ndarray, special_ids: set) -> dict[int, np.ndarray]:
    """Per cell, every gene token it expresses (upstream's genes_to_perturb="all"), in token order."""
    special = list(special_ids)
    return {int(c): np.sort(tokens.cell(int(c))[~np.isin(tokens.cell(int(c)), special)]) for c in cells}


class GeneShiftSums:
    """Running sum, sum of squares and count of each affected gene's cosine, per perturbation key."""

    def __init__(self, vocab_size: int):
        self.size = vocab_size
        self.acc: dict = {}

    def add(self, key, genes: np.ndarray, cos: np.ndarray) -> None:
        if key not in self.acc:
            self.acc[key] = np.zeros((3, self.size))
        a = self.acc[key]
        np.add.at(a[0], genes, cos)
        np.add.at(a[1], genes, cos.astype(np.float64) ** 2)
        np.add.at(a[2], genes, 1)

    def table(self):
        """Rows (key, gene token, mean, std (ddof 0, as np.std), n) for every gene seen."""
        rows = []
        for key, (s, ss, n) in self.acc.items():
            seen = np.flatnonzero(n)
            mean = s[seen] / n[seen]
            std = np.sqrt(np.maximum(ss[seen] / n[seen] - mean**2, 0))
            rows += [(key, int(g), float(m), float(d), int(k)) for g, m, d, k in zip(seen, mean, std, n[seen])]
        return rows
