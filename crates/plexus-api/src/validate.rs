//! Registration → catalog records: defaults, checks, sidecar expansion. Pure; no I/O.
