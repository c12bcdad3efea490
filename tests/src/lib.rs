//! End-to-end support: the test guests' paths and the local servers the tests and
//! benchmarks drive (127.0.0.1 only).

pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

pub mod pages;
pub mod portals;
pub mod python;
