//! Arbitrary bytes as wire messages, through the conversions the handlers
//! run on them. Nothing may panic, and what is accepted is what was sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prodgate::api::convert;
use prodgate::pb;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = pb::RequestPromotionRequest::decode(data) {
        for s in [
            &r.repository,
            &r.source,
            &r.environment,
            &r.reason,
            &r.request_id,
        ] {
            check_id(s);
            check_text(s);
        }
        let sent = r.clone();
        if let Ok(input) = convert::request_input(r) {
            assert_eq!(input.repository.to_string(), sent.repository);
            assert_eq!(input.source.as_reference(), sent.source);
            assert_eq!(input.environment, sent.environment);
            assert_eq!(input.reason, sent.reason);
            assert_eq!(input.request_id, sent.request_id);
            assert!(!input.environment.is_empty());
            assert!(input.request_id.len() <= convert::MAX_REQUEST_ID);
        }
    }

    // The listing requests share the wire bytes: page sizes, state filters,
    // repository filters and ids.
    if let Ok(l) = pb::ListPromotionsRequest::decode(data) {
        check_page_size(l.page_size);
        let _ = convert::state_filter(l.state);
        check_filter(&l.repository);
        check_text(&l.environment);
    }
    if let Ok(h) = pb::HistoryRequest::decode(data) {
        check_page_size(h.page_size);
        check_id(&h.promotion_id);
        check_filter(&h.repository);
    }
    if let Ok(a) = pb::ApproveRequest::decode(data) {
        check_id(&a.promotion_id);
        check_text(&a.comment);
    }
    if data.len() >= 4 {
        let n = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        check_page_size(n);
        let _ = convert::state_filter(n as i32);
    }
});

fn check_id(s: &str) {
    if let Ok(id) = convert::promotion_id(s) {
        assert!(id > 0);
        assert_eq!(id.to_string(), s, "ids have one spelling");
    }
}

fn check_text(s: &str) {
    match convert::text("reason", s) {
        Ok(t) => assert_eq!(t, s),
        Err(_) => assert!(s.len() > convert::MAX_TEXT),
    }
}

fn check_page_size(n: u32) {
    match convert::page_size(n) {
        Ok(size) => {
            assert!(size >= 1 && size <= convert::MAX_PAGE_SIZE as usize);
            assert!(n == 0 || size == n as usize);
        }
        Err(_) => assert!(n > convert::MAX_PAGE_SIZE),
    }
}

fn check_filter(s: &str) {
    if let Ok(Some(r)) = convert::repository_filter(s) {
        assert_eq!(r, s);
    }
}
