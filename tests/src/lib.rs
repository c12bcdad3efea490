//! End-to-end support: the test guests' paths and the local portal simulators.

pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}
