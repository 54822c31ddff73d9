//! Clients: resource profiles, the per-block cost model, and the split planner.
