"""Scaling tools: FLOP accounting from jaxprs and the accelerator fact table."""
