"""lmforge: build an open language model the OLMo way, one Snakemake artifact at a time."""

__version__ = "0.1.0"
