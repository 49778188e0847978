"""tissuelens: spatial factorisation, foundation-model embeddings and SAE features for tissue data."""

__version__ = "0.1.0"
