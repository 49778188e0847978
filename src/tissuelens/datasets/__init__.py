"""Dataset sources: each returns an AnnData in the common contract (see `contract.finalize`)."""
