//! The gRPC surface: handlers (one file per service), conversions between
//! wire and domain types, page tokens, and the one mapping from [`Error`] to
//! `tonic::Status`.
//!
//! [`Error`]: crate::error::Error

pub mod convert;
pub mod error;
pub mod page_token;
pub mod promotion;
