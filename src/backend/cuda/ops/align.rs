//! Gradient-projection alignment (kernels/align.cu): being written.
