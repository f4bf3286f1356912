//! A request over the size limit is RESOURCE_EXHAUSTED, as grpc-go and grpc
//! core answer it and as clients retry or report it; tonic answers
//! OUT_OF_RANGE. Only tonic's own decode-limit status is rewritten (matched
//! by code and message), in the headers of a trailers-only response (unary
//! and server-streaming calls) and in the trailers (client-streaming
//! calls, where the limit is hit mid-stream).

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use http_body_util::BodyExt;
use http_body_util::combinators::MapFrame;

/// How tonic's decoder starts the message of its OUT_OF_RANGE (tonic 0.14,
/// `codec/decode.rs`); `tonics_own_status_is_rewritten` fails if it changes.
const TONIC_DECODE_LIMIT: &str = "Error, decoded message length too large";

pub type Body = MapFrame<tonic::body::Body, fn(Frame<Bytes>) -> Frame<Bytes>>;

/// For `tower::util::MapResponseLayer` around the routes.
pub fn rewrite(res: http::Response<tonic::body::Body>) -> http::Response<Body> {
    let (mut parts, body) = res.into_parts();
    rewrite_status(&mut parts.headers);
    let frames: fn(Frame<Bytes>) -> Frame<Bytes> = rewrite_frame;
    http::Response::from_parts(parts, body.map_frame(frames))
}

fn rewrite_frame(mut frame: Frame<Bytes>) -> Frame<Bytes> {
    if let Some(trailers) = frame.trailers_mut() {
        rewrite_status(trailers);
    }
    frame
}

fn rewrite_status(headers: &mut HeaderMap) {
    // Cheap for the common case: most header maps carry no grpc-status 11.
    if headers.get("grpc-status").map(|v| v.as_bytes()) != Some(b"11") {
        return;
    }
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    if status.code() == tonic::Code::OutOfRange && status.message().starts_with(TONIC_DECODE_LIMIT)
    {
        // The message (sizes found and allowed) stays as it is; the reason
        // is LIMIT_EXCEEDED, as for prodgate's own limits.
        use tonic_types::StatusExt;
        let details = tonic_types::ErrorDetails::with_error_info(
            crate::api::error::reason_name(crate::pb::ErrorReason::LimitExceeded),
            crate::api::error::DOMAIN,
            std::collections::HashMap::from([("limit".to_owned(), "request_size".to_owned())]),
        );
        let rewritten = tonic::Status::with_error_details(
            tonic::Code::ResourceExhausted,
            status.message(),
            details,
        );
        if rewritten.add_header(headers).is_err() {
            headers.insert(
                "grpc-status",
                http::HeaderValue::from(tonic::Code::ResourceExhausted as i32),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_of(status: &tonic::Status) -> HeaderMap {
        let mut h = HeaderMap::new();
        status.add_header(&mut h).expect("valid status");
        h
    }

    #[tokio::test]
    async fn tonics_own_status_is_rewritten() {
        use tonic::codec::Codec;
        // What tonic's decoder says about a 100-byte message with a limit of 10.
        let mut frame = vec![0u8];
        frame.extend_from_slice(&100u32.to_be_bytes());
        frame.extend_from_slice(&[0; 100]);
        let mut stream = tonic::codec::Streaming::new_request(
            tonic_prost::ProstCodec::<(), ()>::default().decoder(),
            http_body_util::Full::new(Bytes::from(frame)),
            None,
            Some(10),
        );
        let tonic_says = stream.message().await.expect_err("over the limit");
        assert_eq!(tonic_says.code(), tonic::Code::OutOfRange, "{tonic_says:?}");
        let mut h = headers_of(&tonic_says);
        rewrite_status(&mut h);
        let s = tonic::Status::from_header_map(&h).expect("a status");
        {
            use tonic_types::StatusExt;
            let info = s.get_details_error_info().expect("an ErrorInfo");
            assert_eq!(info.reason, "LIMIT_EXCEEDED");
        }
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(s.message(), tonic_says.message());
    }

    #[test]
    fn other_statuses_are_left_alone() {
        for s in [
            tonic::Status::out_of_range("page 3 of 2"),
            tonic::Status::invalid_argument(TONIC_DECODE_LIMIT),
            tonic::Status::ok(""),
        ] {
            let mut h = headers_of(&s);
            let before = h.clone();
            rewrite_status(&mut h);
            assert_eq!(h, before, "{s:?}");
        }
    }

    #[test]
    fn trailers_are_rewritten_data_is_not() {
        let over = tonic::Status::out_of_range(format!("{TONIC_DECODE_LIMIT}: found 9"));
        let f = rewrite_frame(Frame::trailers(headers_of(&over)));
        let trailers = f.into_trailers().expect("still trailers");
        assert_eq!(trailers["grpc-status"], "8");
        let data = Bytes::from_static(b"\0\0\0\0\x0bgrpc-status");
        let f = rewrite_frame(Frame::data(data.clone()));
        assert_eq!(f.into_data().expect("still data"), data);
    }
}
