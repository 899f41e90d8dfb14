//! Library of `dadd-master`; the binary is a thin shell over it.
