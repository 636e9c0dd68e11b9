//! The wire below the hub: the frame reader (bytes in), and a connection's outbound side
//! with the rounds that batch its writes and the hub-wide count of refused sockets (bytes
//! out). Nothing here knows the hub, a channel or a connection's task.

pub(crate) mod backpressure;
pub(crate) mod cork;
pub(crate) mod fanout;
pub(crate) mod outbox;
pub(crate) mod reader;
