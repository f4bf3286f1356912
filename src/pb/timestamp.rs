//! `google.protobuf.Timestamp` as the generated messages carry it: the
//! well-known type's two fields, with the proto3 JSON that `--output json`
//! prints.
//!
//! Written here rather than taken from `pbjson_types` because its serde
//! differs from the proto3 JSON spec and from what scripts read today: it
//! prints `2026-11-26T14:32:00+00:00` where the spec says `Z`, and fails the
//! whole line for a time chrono cannot hold. This one prints `Z` with 0, 3, 6
//! or 9 fractional digits and, like every renderer here, never fails
//! (`cli::time::rfc3339`).

use crate::cli::time::{Precision, rfc3339};
use serde::de::Error as _;

#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message, serde::Serialize)]
#[serde(into = "String")]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// 0..1e9 on a valid timestamp.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl From<Timestamp> for String {
    fn from(ts: Timestamp) -> Self {
        rfc3339(&ts, Precision::Exact)
    }
}

impl From<std::time::SystemTime> for Timestamp {
    fn from(t: std::time::SystemTime) -> Self {
        let prost_types::Timestamp { seconds, nanos } = t.into();
        Self { seconds, nanos }
    }
}

/// The generated messages derive both directions; parsing is RFC 3339 with
/// any offset, as the spec allows.
impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let t: jiff::Timestamp = text.parse().map_err(D::Error::custom)?;
        Ok(Self {
            seconds: t.as_second(),
            nanos: t.subsec_nanosecond(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_rfc3339_with_z_and_parses_back() {
        let ts = Timestamp {
            seconds: 1_795_703_520,
            nanos: 500_000_000,
        };
        let text = serde_json::to_string(&ts).unwrap();
        assert_eq!(text, r#""2026-11-26T14:32:00.500Z""#);
        assert_eq!(serde_json::from_str::<Timestamp>(&text).unwrap(), ts);
        let offset: Timestamp = serde_json::from_str(r#""2026-11-26T15:32:00+01:00""#).unwrap();
        assert_eq!(offset.seconds, 1_795_703_520);
    }
}
