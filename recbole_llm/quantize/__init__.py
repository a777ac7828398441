"""Item quantizers: product quantization (pq), RQ-VAE tokenizer (rqvae, semantic_ids), balanced k-means."""
