//! Warden policy core (being written).
