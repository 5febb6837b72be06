"""Meeting transcription: audio sources, a crash-safe per-meeting transcript store, renderers."""
