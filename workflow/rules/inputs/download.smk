# Input functions and params of the rules in ../download.smk, which includes this file (snakemake --lint wants
# functions and rules in separate files).


def download_inputs(wildcards):
    """Local files a download reads, so that editing them reruns it."""
    entry = config["datasets"][wildcards.dataset]
    files = []
    if entry["source"] == "local" and Path(entry["path"]).is_file():
        files.append(entry["path"])
    if "labels" in entry:
        files.append(entry["labels"]["path"])
    return files
