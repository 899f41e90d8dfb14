//! Dadd's shared vocabulary: the spec, its validation, the process state
//! machine, and the wire types every daemon speaks.
//!
//! Architecture invariant: this crate does no I/O. It parses and checks; the
//! daemons read files, sockets and databases.

pub mod api;
mod error;
pub mod schema;
mod spec;
pub mod state;

pub use error::{SpecError, SpecErrors};
pub use spec::{
    parse, parse_value, redact_url, Download, Parsed, PythonDep, Spec, UnknownKeys, KNOWN_KEYS,
    RESERVED_NAMES, SETTINGS_PLACEHOLDER,
};
pub use state::{check_transition, IllegalTransition, ProcState, Transition, UnknownState};

/// The version every Dadd daemon reports (`GET /up`, heartbeats, health).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
