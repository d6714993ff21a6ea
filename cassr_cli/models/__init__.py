"""nn.Modules of cassr's own: the multi-attention adapter."""
