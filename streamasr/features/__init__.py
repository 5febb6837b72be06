"""Model input features: the incremental Whisper log-mel spectrogram of one segment."""
