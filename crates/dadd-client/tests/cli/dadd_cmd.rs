//! The `dadd` binary.
