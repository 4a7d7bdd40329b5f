//! HCL/JSON definition files.
