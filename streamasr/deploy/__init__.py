"""Ways to run streamasr past one process (docs/scaling.md)."""
