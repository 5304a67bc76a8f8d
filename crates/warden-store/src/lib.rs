//! Warden's persistence layer (being written).
