"""Matrix decomposition: large MatMul/Gemm weights replaced by a product of two thinner ones."""
