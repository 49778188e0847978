"""Tissue-blind leakage checker for narrative prompts.

A prompt passes when it names no tissue or organ, no tissue-specific cell type, no raw count (an
integer of three or more digits that is not a percentage), and none of the sample's identifiers
(dataset name, library ids, source names, cell barcodes, group labels, gene symbols). Used by the
narrative rule before anything is written, and by the tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tissuelens.errors import InputError

# stems matched at a word start, case-insensitively ("hepat" catches hepatic, hepatocyte, ...)
TISSUE_STEMS = (
    "brain", "cerebr", "cerebell", "cortex", "cortic", "neocort", "hippocamp", "striat", "thalam", "hypothalam",
    "amygdal", "olfactory", "prefrontal", "dlpfc", "spinal", "retina", "medulla", "pons", "midbrain",
    "liver", "hepat", "biliar", "gallbladder", "lung", "pulmon", "alveol", "bronch", "trache", "airway",
    "heart", "cardi", "myocard", "ventric", "atri", "aort", "kidney", "renal", "nephr", "glomerul",
    "colon", "colorect", "rect", "intestin", "ileum", "ileal", "jejun", "duoden", "bowel", "gut", "caec", "cecum",
    "stomach", "gastr", "esophag", "oesophag", "pancrea", "spleen", "splen", "lymph node", "tonsil", "thym",
    "bone marrow", "marrow", "peripheral blood", "pbmc", "breast", "mammar", "prostat", "ovar", "uter", "endometri",
    "cervi", "placent", "testis", "testic", "skin", "derm", "epiderm", "muscl", "skeletal", "adipose", "cartilag",
    "thyroid", "adrenal", "bladder", "embryo", "fetal", "foetal", "organoid", "tumour", "tumor", "carcinom",
    "glioma", "glioblastom", "melanom", "lymphom", "leukem", "leukaem", "sarcom",
)
CELL_TYPE_STEMS = (
    "hepatocyt", "cholangiocyt", "kupffer", "neuron", "astrocyt", "oligodendro", "microglia", "purkinje",
    "pyramidal", "interneuron", "ependym", "schwann", "photoreceptor", "tanycyt", "cardiomyocyt", "enterocyt",
    "colonocyt", "goblet", "paneth", "keratinocyt", "melanocyt", "pneumocyt", "podocyt", "mesangial", "acinar",
    "islet", "osteoblast", "osteoclast", "osteocyt", "chondrocyt", "adipocyt", "myocyt", "myofib", "sertoli",
    "leydig", "trophoblast", "thymocyt", "germinal cent", "granule cell", "mossy", "ductal", "parietal cell",
    "chief cell", "club cell", "ciliated", "urothel", "erythro", "megakaryocyt",
)
_STEM_RE = {
    "tissue word": re.compile(r"\b(" + "|".join(re.escape(s) for s in TISSUE_STEMS) + r")", re.IGNORECASE),
    "cell-type name": re.compile(r"\b(" + "|".join(re.escape(s) for s in CELL_TYPE_STEMS) + r")", re.IGNORECASE),
}
# integers of 3+ digits (or with thousands separators), not inside a decimal and not a percentage
_RAW_NUMBER = re.compile(r"(?<![\w.,^])(\d{1,3}(?:,\d{3})+|\d{3,})(?![\w.,]*\d)(?!\s*%)")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*[A-Za-z0-9]|[A-Za-z0-9]")
# words that are too generic to count as identifiers even when a dataset uses them as names
GENERIC = {"a", "an", "the", "of", "and", "or", "in", "on", "to", "is", "it", "sample", "group", "cell", "cells",
           "spot", "spots", "gene", "genes", "data", "image", "x", "y", "none", "nan", "true", "false", "all"}


@dataclass(frozen=True)
class Finding:
    kind: str
    text: str

    def __str__(self) -> str:
        return f"{self.kind} {self.text!r}"


def _word_start_matches(kind: str, text: str) -> list[Finding]:
    found = []
    for m in _STEM_RE[kind].finditer(text):
        end = re.match(r"[\w-]*", text[m.end():]).end() + m.end()
        found.append(Finding(kind, text[m.start():end]))
    return found


def check_prompt(text: str, identifiers=(), genes=()) -> list[Finding]:
    """Every leak in `text`; empty when the prompt is tissue-blind.

    identifiers: sample/dataset names, library ids, barcodes, group labels (matched as whole tokens,
    case-insensitively; multi-word ones as phrases). genes: gene symbols (whole tokens, case-sensitive).
    """
    findings: list[Finding] = []
    findings += _word_start_matches("tissue word", text)
    findings += _word_start_matches("cell-type name", text)
    findings += [Finding("raw count", m.group(1)) for m in _RAW_NUMBER.finditer(text)]
    tokens = _TOKEN.findall(text)
    lower_tokens = {t.lower() for t in tokens}
    ids = {str(i).strip() for i in identifiers if str(i).strip()}
    # numbers are left to the raw-count rule (numeric barcodes or group labels would match every metric)
    ids = {i for i in ids if i.lower() not in GENERIC and len(i) > 1 and not re.fullmatch(r"[\d.,]+", i)}
    for ident in sorted(ids):
        if re.fullmatch(r"[A-Za-z0-9_.\-]+", ident):
            if ident.lower() in lower_tokens:
                findings.append(Finding("identifier", ident))
        elif re.search(r"(?<!\w)" + re.escape(ident) + r"(?!\w)", text, re.IGNORECASE):
            findings.append(Finding("identifier", ident))
    gene_set = {str(g) for g in genes if len(str(g)) > 1}
    findings += [Finding("gene symbol", t) for t in dict.fromkeys(tokens) if t in gene_set]
    return list(dict.fromkeys(findings))


def assert_tissue_blind(text: str, identifiers=(), genes=(), where: str = "prompt") -> None:
    """Raise InputError listing the leaks (one line) when `text` is not tissue-blind."""
    findings = check_prompt(text, identifiers, genes)
    if findings:
        shown = ", ".join(str(f) for f in findings[:8])
        more = f" and {len(findings) - 8} more" if len(findings) > 8 else ""
        raise InputError(f"{where}: not tissue-blind: {shown}{more}")
