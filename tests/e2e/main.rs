//! End-to-end tests: each module starts real Dadd binaries.
