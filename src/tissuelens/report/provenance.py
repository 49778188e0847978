"""Section: how the report was made: effective settings, versions, checkpoints, untrained weights."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import yaml

from tissuelens.report import readers
from tissuelens.report.context import Context
from tissuelens.report.html import Section, esc, h3, note, pre, table

TITLE = "Provenance"
SID = "provenance"
PACKAGES = ("tissuelens", "snakemake", "anndata", "scanpy", "squidpy", "numpy", "pandas", "scipy", "scikit-learn",
            "matplotlib", "torch", "gpytorch", "transformers", "sae-lens", "open-clip-torch", "pillow")


def package_versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(repo: Path) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def checkpoints(ctx: Context) -> tuple[list[dict], list[str]]:
    """Checkpoints used by the stages (rows) and plain notes for untrained weights."""
    rows, untrained = [], []
    embed = ctx.plan.get("embed", {})
    for model, files in embed.get("units", {}).items():
        if "activations/meta.json" in files:
            meta = readers.read_json(files["activations/meta.json"])
            rows.append({"stage": "embed", "model": model, "kind": meta.get("kind"),
                         "checkpoint": meta.get("checkpoint"), "untrained": bool(meta.get("untrained", False))})
            if meta.get("untrained"):
                untrained.append(f"Embedding model '{model}' had untrained (random test) weights: its embeddings, "
                                 "and the SAE features learned on them, carry no biological meaning.")
    sae = ctx.plan.get("sae", {})
    for model, files in sae.get("units", {}).items():
        if "metrics.json" in files:
            m = readers.read_json(files["metrics.json"])
            rows.append({"stage": "sae", "model": model, "kind": m.get("architecture", "SAE"),
                         "checkpoint": str(Path(files["metrics.json"]).parent / "sae"),
                         "untrained": bool(m.get("untrained_model", False))})
    narrative = ctx.shared.get("narrative")
    if narrative and narrative.get("model"):
        model = narrative["model"]
        rows.append({"stage": "narrative", "model": model.get("name", "MedGemma"), "kind": model.get("architecture"),
                     "checkpoint": model.get("checkpoint"), "untrained": bool(model.get("untrained", False))})
        if model.get("untrained"):
            untrained.append("The narrative model had untrained (random test) weights: its text is noise.")
    return rows, untrained


def section(ctx: Context) -> Section:
    parts = []
    rows, untrained = checkpoints(ctx)
    for text in untrained:
        parts.append(note(text, "warn"))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commit = git_commit(Path(__file__).resolve().parents[3])
    parts.append(f"<p>Built {esc(stamp)}" + (f" from tissuelens commit <code>{esc(commit)}</code>" if commit else "")
                 + ".</p>")
    parts.append(h3("Checkpoints") + (table(rows) if rows else note("No model checkpoints were used.", "info")))
    stage_rows = [{"stage": s, "status": e["status"], "units": ", ".join(e["units"]) or "–", "note": e.get("reason") or ""}
                  for s, e in ctx.plan.items()]
    parts.append(h3("Stages") + table(stage_rows))
    origin = dict(ctx.adata.uns.get("tissuelens", {})) if hasattr(ctx.adata, "uns") else {}
    if origin:
        parts.append(h3("Data provenance (preprocessed.h5ad)") + table([{"key": k, "value": str(v)} for k, v in origin.items()]))
    versions = package_versions()
    parts.append(h3("Tool and package versions") + table([{"package": k, "version": v} for k, v in versions.items()]))
    parts.append(h3("Effective configuration of this dataset")
                 + pre(yaml.safe_dump(ctx.run_config, sort_keys=False, default_flow_style=False)))
    return Section(SID, TITLE, "".join(parts))
