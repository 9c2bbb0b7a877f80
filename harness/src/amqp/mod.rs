//! The broker, seen from outside: connect, publish (with confirms), tap (push-based capture of
//! everything on the fanouts and DLQs), and delete a namespace's topology. One file per verb.

mod connect;
mod delete;
mod publish;
mod tap;

pub use connect::{Topology, connect, ensure_queue};
pub use delete::delete_namespace;
pub use publish::{Publisher, RawMessage};
pub use tap::{Captured, Source, Tap};
