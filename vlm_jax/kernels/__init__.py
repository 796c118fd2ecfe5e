"""Custom kernels: native bf16 matmuls on CPU (oneDNN through XLA FFI)."""
