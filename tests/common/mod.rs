//! Helpers shared by the end-to-end tests: start the real binaries and talk to them.
#![allow(dead_code)]

pub mod control_plane;
