//! The GPU implementation of [`super::Device`] through cudarc (written next).
