//! The domain: promotion records, the state machine, approval policy, the
//! gates, name grammar and the audit hash chain. Pure: no tonic, no sled,
//! no I/O.

pub mod audit;
pub mod gates;
pub mod machine;
pub mod model;
pub mod names;
pub mod policy;
