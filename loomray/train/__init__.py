"""Training: the per-worker loop (``loop``) and, later, the Ray launch."""
