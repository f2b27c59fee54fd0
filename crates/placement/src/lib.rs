//! Exclusive-CPU and memory-node allocation for ingot's containers.
