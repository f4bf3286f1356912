//! The domain: promotion records, the state machine, approval policy, the
//! gates, name grammar, the audit hash chain and tag drift. Pure: no tonic, no sled,
//! no I/O.

pub mod audit;
pub mod decision;
pub mod drift;
pub mod gates;
pub mod machine;
pub mod model;
pub mod names;
pub mod policy;
pub mod release;
pub mod signature;
