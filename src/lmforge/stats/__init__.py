"""Corpus analyses (WIMBD) over documents and mixes, in DuckDB."""
