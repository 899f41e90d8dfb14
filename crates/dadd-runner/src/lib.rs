//! Library of `dadd-runner`; the binary is a thin shell over it.
