"""Inference: finding images, decoding them ahead of the model, the two-pass group engine,
and the writers of masks, overlays and JSONL records."""
