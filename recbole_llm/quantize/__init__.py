"""Item quantizers: product quantization, RQ-VAE and semantic-id assignment."""
