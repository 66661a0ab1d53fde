"""Stage 4b, the predictor and learnable tokens: the model, its losses and metrics, training from a ranking
file, and the ranker pack (``prtk-pack/1``) that carries both."""
