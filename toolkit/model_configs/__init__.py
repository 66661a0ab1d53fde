"""Built-in open_clip model configs (JSON), registered under their file stems."""
