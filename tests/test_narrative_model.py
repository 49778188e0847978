"""The narrative's model path with a tiny random Gemma 3 (MedGemma's architecture) and a processor built offline."""

from __future__ import annotations

import json

import pytest
from conftest import error_line, run_script
from helpers.report_fixtures import report_defaults, write_preprocessed

from tissuelens.report.medgemma import answer_text

IMAGE = 56  # the tiny SigLIP's input size (4 patches of 14 per side -> 16 patches, pooled to 4 tokens)


def build_tiny_medgemma(out):
    """A random Gemma3ForConditionalGeneration with a real Gemma3Processor (byte-fallback BPE tokenizer with
    Gemma's special tokens, Gemma 3 image processor, a Gemma-style chat template), saved like a checkpoint."""
    import torch
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor,
                              Gemma3TextConfig, GemmaTokenizer, SiglipVisionConfig)

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>",
                "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"<0x{b:02X}>": len(specials) + b for b in range(256)})
    vocab["▁"] = len(vocab)
    tok = GemmaTokenizer(vocab=vocab, merges=[], extra_special_tokens={
        "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"})
    template = (
        "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
        "<start_of_turn>{{ role }}\n{% if m['content'] is string %}{{ m['content'] }}{% else %}"
        "{% for c in m['content'] %}{% if c['type'] == 'image' %}<start_of_image>{% elif c['type'] == 'text' %}"
        "{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    image_processor = Gemma3ImageProcessor(size={"height": IMAGE, "width": IMAGE}, image_mean=[0.5] * 3,
                                           image_std=[0.5] * 3)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, chat_template=template,
                                image_seq_length=4)
    config = Gemma3Config(
        text_config=Gemma3TextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                     max_position_embeddings=4096, sliding_window=64),
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=IMAGE, patch_size=14),
        mm_tokens_per_image=4, boi_token_id=tok.boi_token_id, eoi_token_id=tok.eoi_token_id,
        image_token_id=tok.image_token_id, pad_token_id=0, bos_token_id=2, eos_token_id=[1, vocab["<end_of_turn>"]])
    torch.manual_seed(0)
    Gemma3ForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)
    (out / "tissuelens_model.json").write_text(json.dumps({"name": "tiny-medgemma", "kind": "medgemma",
                                                            "source": "random", "untrained": True}))
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_medgemma(tmp_path_factory.mktemp("medgemma") / "tiny-medgemma")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("narr-data")
    return write_preprocessed(root, n_spots=80, n_genes=30)


def test_rule_script_runs_the_tiny_model_on_the_letterboxed_image(checkpoint, data, tmp_path):
    qc, h5ad = data
    settings = {**report_defaults()["narrative"], "checkpoint": str(checkpoint), "device": "cpu",
                "max_new_tokens": 6}
    out = tmp_path / "narrative.json"
    proc = run_script("narrative", "--dataset", "demo", "--entry", json.dumps({"source": "synthetic"}), "--qc", qc,
                      "--preprocessed", h5ad, "--plan", "{}", "--settings", json.dumps(settings), "--out", out,
                      check=True)
    rec = json.loads(out.read_text())
    assert rec["mode"] == "model" and isinstance(rec["text"], str)
    assert rec["model"]["architecture"] == "Gemma3ForConditionalGeneration"
    assert rec["model"]["untrained"] is True and rec["model"]["name"] == "tiny-medgemma"
    assert rec["image"]["size"] == [IMAGE, IMAGE]  # the processor's size wins over image_size (896)
    assert rec["image"]["original_size"] == [96, 96]
    assert "--- model text ---" in proc.stdout


def test_without_checkpoint_the_prompt_is_ready_at_the_configured_size(data, tmp_path):
    qc, h5ad = data
    out = tmp_path / "narrative.json"
    settings = {**report_defaults()["narrative"], "image_size": 64}
    run_script("narrative", "--dataset", "demo", "--qc", qc, "--preprocessed", h5ad, "--plan", "{}",
               "--settings", json.dumps(settings), "--out", out, check=True)
    rec = json.loads(out.read_text())
    assert rec["mode"] == "prompt" and rec["text"] is None and rec["model"] is None
    assert rec["image"]["size"] == [64, 64]
    assert rec["prompt"].startswith("Sample sample-")


def test_missing_checkpoint_is_one_error_line_and_no_output(data, tmp_path):
    qc, h5ad = data
    out = tmp_path / "narrative.json"
    settings = {"checkpoint": str(tmp_path / "nowhere"), "device": "cpu"}
    proc = run_script("narrative", "--dataset", "demo", "--qc", qc, "--preprocessed", h5ad, "--plan", "{}",
                      "--settings", json.dumps(settings), "--out", out)
    assert proc.returncode == 2
    assert error_line(proc) == f"error: {tmp_path / 'nowhere'}: narrative checkpoint directory not found"
    assert not out.exists()


def test_fake_narrator_and_pipeline_output_parsing(data):
    import anndata as ad

    from tissuelens.report.prompt import make_narrative

    qc, h5ad = data
    seen = {}

    class Fake:
        input_size = 32
        info = {"name": "fake", "untrained": False}

        def __call__(self, system, prompt, image, max_new_tokens):
            seen.update(system=system, prompt=prompt, size=image.size, max_new_tokens=max_new_tokens)
            return answer_text([{"generated_text": [{"role": "user", "content": "x"},
                                                    {"role": "assistant", "content": " A layered section. "}]}])

    rec = make_narrative("demo", {}, json.loads(qc.read_text()), ad.read_h5ad(h5ad), {}, {"max_new_tokens": 9},
                         narrator=Fake())
    assert rec["text"] == "A layered section." and rec["mode"] == "model"
    assert seen["size"] == (32, 32) and seen["max_new_tokens"] == 9 and seen["prompt"] == rec["prompt"]
    assert answer_text([{"generated_text": [{"role": "assistant", "content": [{"type": "text", "text": "hi"}]}]}]) == "hi"
