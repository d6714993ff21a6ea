"""Training the multi-attention adapter: degradations, data, and the training loop."""
