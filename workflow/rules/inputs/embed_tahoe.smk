# Params of the rule in ../embed_tahoe.smk, which includes this file (snakemake --lint wants functions and rules
# in separate files). Its settings param is embed_kind_settings (inputs/embed.smk), shared with Loki.

# Tahoe-x1's own image (llm-foundry, composer, flash-attn for CUDA 12): the rule's `container:`.
# workflow/envs/tahoe.yaml is the conda alternative. workflow/envs/tahoe_cpu.yaml (no flash-attn) is
# download_model's env for Tahoe models (MODEL_ENVS); embed_tahoe keeps a fixed env, since --containerize refuses
# a conda function on a rule outside the DAG; on a CPU, run its script in the tahoe_cpu.yaml env
# (docs/embed_tahoe.md).
TAHOE_IMAGE = "docker://ghcr.io/tahoebio/tahoe-x1:1.0.0"
