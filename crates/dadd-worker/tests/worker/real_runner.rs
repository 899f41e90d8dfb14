//! The worker with the real `dadd-runner` binary (built if missing).
