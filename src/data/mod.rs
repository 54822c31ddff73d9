//! Data sets: loading, partitioning across clients, train/test splits.
