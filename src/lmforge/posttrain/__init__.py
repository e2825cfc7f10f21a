"""Post-training: chat format, SFT, DPO, RLVR and promptability."""
