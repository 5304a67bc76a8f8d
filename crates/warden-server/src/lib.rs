//! Warden's decision service. This crate alone knows the wire format (DESIGN §4, §8): the
//! policy core's types are converted to JSON bodies here and nowhere else.
#![deny(missing_docs)]

pub mod ids;
pub mod keys;
pub mod wire;
