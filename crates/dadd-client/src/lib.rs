//! Typed HTTP client of the master API.
