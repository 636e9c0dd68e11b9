//! [`ConnId`]: who a connection is, to the hub, the channels and the broker alike. Here,
//! below all three, so none of them imports another for it.

/// A connection's identity within this hub: unique for the hub's lifetime, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub(crate) u64);

impl ConnId {
    /// The id as a number (as written in logs, webhooks and stdio lines).
    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
