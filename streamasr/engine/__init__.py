"""The sans-I/O streaming engine: sessions, stabilisation and decoder state."""
