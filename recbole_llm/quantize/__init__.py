"""Item quantizers: product quantization (pq) and residual quantization (rqvae) of item embeddings."""
