"""The models (OLMo 2, OLMoE), the Hugging Face adapter and the checkpoint format."""
