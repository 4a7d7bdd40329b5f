//! plexus-test
