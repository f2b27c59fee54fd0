//! NVIDIA CDI spec generation.
