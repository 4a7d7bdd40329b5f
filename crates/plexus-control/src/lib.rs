//! plexus-control
