"""The model stages: activation (stage 1), conditioning, multi-attention guided denoising, decoding."""
