//! Sluice API types.
