//! Reading an HTTP answer's body without trusting its size: the registry
//! client, the JWKS fetcher, the console's OpenID Connect client and the
//! Slack notifier all read bodies of peers that may lie or flood.

/// Reads at most `limit` bytes of the body, streaming; `complete` is false
/// when more followed (the rest is never read: dropping the response closes
/// the connection). At most one network chunk beyond `limit` is ever held.
pub async fn read_capped(
    res: &mut reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut buf = Vec::new();
    while let Some(chunk) = res.chunk().await? {
        let room = limit - buf.len();
        if chunk.len() > room {
            buf.extend_from_slice(&chunk[..room]);
            return Ok((buf, false));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf, true))
}
