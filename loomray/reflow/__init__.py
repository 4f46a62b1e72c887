"""Reflow (Liu et al., 2023) from a loomray model: generate pairs, train on them.

``generate``: (noise seed, sample) pairs from a checkpoint's EMA model, as Ray
tasks writing Parquet shards (``loomray pairs``). ``chain``: the whole recipe,
pairs -> fine-tune on the pairs -> FID before and after (``loomray reflow``).
"""
