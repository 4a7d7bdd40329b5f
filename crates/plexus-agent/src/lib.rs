//! plexus-agent
