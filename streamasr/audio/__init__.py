"""Audio front end: PCM decoding, resampling to the 16 kHz clock, file loading, the sample ring."""
