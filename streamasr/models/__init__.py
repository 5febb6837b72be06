"""Model adapters (Whisper, GLM-ASR, Tiny Audio), weight conversion and model resolution."""
