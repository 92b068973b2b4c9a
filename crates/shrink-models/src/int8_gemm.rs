//! Integer GEMM for int8 activations × int8 weights (LLM.int8() and dynamic int8).
