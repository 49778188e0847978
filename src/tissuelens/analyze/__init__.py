"""The analyze stage: spatial domains, marker annotation, doublets, spatial statistics, agreement."""
