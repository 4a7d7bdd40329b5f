//! plexus-proxy
