//! Local portal simulators.
