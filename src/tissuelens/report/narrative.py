"""Section: the tissue-blind narrative: the model's text when a checkpoint ran, else the ready prompt."""

from __future__ import annotations

import base64
import binascii

from tissuelens.errors import InputError
from tissuelens.report import readers
from tissuelens.report.context import Context
from tissuelens.report.html import Section, esc, h3, note, pre

TITLE = "Narrative summary"
SID = "narrative"
REQUIRED = ("mode", "system", "prompt")


def load(path) -> dict:
    data = readers.read_json(path)
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise InputError(f"{path}: not a narrative file (missing {', '.join(missing)})")
    return data


def section(ctx: Context) -> Section:
    path = ctx.paths.get("narrative")
    if not path:
        return Section(SID, TITLE, note("The narrative is turned off for this dataset (report.narrative.enabled: "
                                        "false).", "missing"), status="skipped")
    data = load(path)
    ctx.shared["narrative"] = data
    parts = []
    model = data.get("model") or {}
    if data["mode"] == "model" and data.get("text") is not None:
        if model.get("untrained"):
            parts.append(note(f"The narrative model ({model.get('name')}) has untrained (random test) weights: the "
                              "text below is noise and only shows that the model path works.", "warn"))
        parts.append(f"<p>Written by <b>{esc(model.get('name', 'the model'))}</b> from the aggregated metrics and the "
                     "tissue image only (tissue-blind prompt below).</p>")
        paragraphs = [p for p in str(data["text"]).split("\n\n") if p.strip()] or ["(the model returned no text)"]
        parts.append('<div class="narrative">' + "".join(f"<p>{esc(p)}</p>" for p in paragraphs) + "</div>")
    else:
        parts.append(note("No narrative model is configured (report.narrative.checkpoint), so the prompt is shown "
                          "instead: it is ready to paste, with the image, into MedGemma or another medical "
                          "vision-language model.", "info"))
    parts.append(f"<p>Sample pseudonym <code>{esc(data.get('sample_id', '?'))}</code>. Leakage check: passed"
                 + (f"; {len(data.get('withheld', []))} data line(s) withheld because they would reveal the sample"
                    if data.get("withheld") else "") + ".</p>")
    parts.append(h3("System prompt") + pre(data["system"]) + h3("Prompt") + pre(data["prompt"]))
    image = data.get("image") or {}
    if image.get("png_base64"):
        try:
            png = base64.b64decode(image["png_base64"], validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"{path}: image.png_base64 is not valid base64") from None
        size = image.get("size", ["?", "?"])
        parts.append(ctx.figures.embed_png(png, SID, "model_input",
                                           f"Tissue image as given to the model ({size[0]}×{size[1]}, letterboxed)"))
    else:
        parts.append(note("No tissue image: the prompt is text only.", "info"))
    return Section(SID, TITLE, "".join(parts))
