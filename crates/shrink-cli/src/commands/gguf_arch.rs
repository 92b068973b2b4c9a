//! The HF → GGUF mapping now lives in `shrink_models::gguf_arch`.
