"""Stage 8, the quickstart: the whole pipeline on a shipped test bed, its summary and plots."""
