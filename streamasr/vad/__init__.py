"""Voice activity detection: webrtcvad frames turned into utterance start/end events."""
