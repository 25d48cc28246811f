"""The inference layer: decoding, validation, the model session. Knows nothing of HTTP."""
