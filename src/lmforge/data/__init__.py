"""The data half: crawl, extraction, taggers, dedup, decontamination, quality, mixing, tokens."""
