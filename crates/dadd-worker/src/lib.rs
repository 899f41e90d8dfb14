//! Library of `dadd-worker`; the binary is a thin shell over it.
