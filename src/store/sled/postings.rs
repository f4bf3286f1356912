//! Append-only posting lists: the ascending sequence numbers (or ids) filed
//! under one index prefix, packed up to [`CHUNK`] per sled key.
//!
//! sled 0.34 splits a leaf at 16 entries whatever their size, and keeps
//! per-page bookkeeping in memory for every leaf. One key per posting made the
//! indexes most of the database's pages (and of its start-up work and resident
//! memory); packing 16 postings per key makes them a small fraction.
//!
//! A chunk's key is the prefix followed by its first member (big-endian), its
//! value the members as big-endian u64s. Appends go to the last chunk until it
//! is full. Appending a member not greater than the last one changes nothing,
//! so replaying an append after a crash is harmless.

use super::keys;

/// Members per chunk (8 bytes each). Every append rewrites its chunk, so
/// bigger chunks write more: at 200,000 audit entries the store took 3,214
/// bytes per entry with 64, 1,832 with 16 and 1,885 with 8 (more keys).
pub const CHUNK: usize = 16;

fn members(value: &[u8]) -> impl DoubleEndedIterator<Item = u64> + '_ {
    value.chunks_exact(8).filter_map(keys::read_u64)
}

/// Files `n` under `prefix`; it must be greater than every member so far.
pub fn append(tree: &sled::Tree, prefix: &[u8], n: u64) -> sled::Result<()> {
    let all = keys::indexed(prefix, 0)..=keys::indexed(prefix, u64::MAX);
    if let Some((key, value)) = tree.range(all).next_back().transpose()? {
        if members(&value).next_back().is_some_and(|last| last >= n) {
            return Ok(());
        }
        if value.len() < CHUNK * 8 {
            let mut grown = Vec::with_capacity(value.len() + 8);
            grown.extend_from_slice(&value);
            grown.extend_from_slice(&n.to_be_bytes());
            tree.insert(key, grown)?;
            return Ok(());
        }
    }
    tree.insert(keys::indexed(prefix, n), &n.to_be_bytes())?;
    Ok(())
}

/// Takes `n` out of the list under `prefix`, if it is there (rolling back a
/// refused write). A chunk left empty is removed.
pub fn remove(tree: &sled::Tree, prefix: &[u8], n: u64) -> sled::Result<()> {
    let holder = tree
        .range(keys::indexed(prefix, 0)..=keys::indexed(prefix, n))
        .next_back()
        .transpose()?;
    let Some((key, value)) = holder else {
        return Ok(());
    };
    let kept: Vec<u8> = members(&value)
        .filter(|&m| m != n)
        .flat_map(u64::to_be_bytes)
        .collect();
    if kept.len() == value.len() {
        Ok(())
    } else if kept.is_empty() {
        tree.remove(key).map(drop)
    } else {
        tree.insert(key, kept).map(drop)
    }
}

/// The members under `prefix` from `start` on, ascending.
pub fn from<'a>(
    tree: &'a sled::Tree,
    prefix: &[u8],
    start: u64,
) -> impl Iterator<Item = sled::Result<u64>> + 'a {
    // The chunk holding `start` is the last one that begins at or before it.
    let first_chunk = match tree
        .range(keys::indexed(prefix, 0)..=keys::indexed(prefix, start))
        .next_back()
        .transpose()
    {
        Ok(Some((key, _))) => Ok(key.to_vec()),
        Ok(None) => Ok(keys::indexed(prefix, start)),
        Err(e) => Err(e),
    };
    let end = keys::indexed(prefix, u64::MAX);
    let (chunks, failed) = match first_chunk {
        Ok(k) => (Some(tree.range(k..=end)), None),
        Err(e) => (None, Some(Err(e))),
    };
    failed.into_iter().chain(
        chunks
            .into_iter()
            .flatten()
            .flat_map(move |kv| unpack(kv, start, false)),
    )
}

/// The members under `prefix` up to `end` (inclusive), newest (greatest) first.
pub fn down_from<'a>(
    tree: &'a sled::Tree,
    prefix: &[u8],
    end: u64,
) -> impl Iterator<Item = sled::Result<u64>> + 'a {
    // Chunks begin with their smallest member, so every chunk holding a
    // member up to `end` begins at or before it.
    tree.range(keys::indexed(prefix, 0)..=keys::indexed(prefix, end))
        .rev()
        .flat_map(move |kv| {
            unpack(kv, 0, true).filter(move |m| m.as_ref().map_or(true, |&n| n <= end))
        })
}

fn unpack(
    kv: sled::Result<(sled::IVec, sled::IVec)>,
    start: u64,
    reverse: bool,
) -> std::vec::IntoIter<sled::Result<u64>> {
    match kv {
        Ok((_, value)) => {
            let mut out: Vec<_> = members(&value).filter(|&n| n >= start).map(Ok).collect();
            if reverse {
                out.reverse();
            }
            out.into_iter()
        }
        Err(e) => vec![Err(e)].into_iter(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        db.open_tree("t").unwrap()
    }

    fn collect(it: impl Iterator<Item = sled::Result<u64>>) -> Vec<u64> {
        it.map(Result::unwrap).collect()
    }

    #[test]
    fn lists_are_ascending_and_resume_anywhere_across_chunks() {
        let t = tree();
        let members: Vec<u64> = (1..=300).map(|i| i * 3).collect();
        for &n in &members {
            append(&t, b"Ra\0", n).unwrap();
            append(&t, b"Rb\0", n + 1).unwrap();
        }
        // 300 members in chunks of 64: five keys per list, not 300.
        assert_eq!(t.len(), 2 * 300_usize.div_ceil(CHUNK));
        assert_eq!(collect(from(&t, b"Ra\0", 0)), members);
        for start in [1, 3, 4, 191, 192, 193, 900, 901] {
            let want: Vec<u64> = members.iter().copied().filter(|&n| n >= start).collect();
            assert_eq!(collect(from(&t, b"Ra\0", start)), want, "from {start}");
        }
        let mut newest = members.clone();
        newest.reverse();
        assert_eq!(collect(down_from(&t, b"Ra\0", u64::MAX)), newest);
        for end in [0, 2, 3, 4, 191, 192, 193, 900, 901] {
            let want: Vec<u64> = newest.iter().copied().filter(|&n| n <= end).collect();
            assert_eq!(
                collect(down_from(&t, b"Ra\0", end)),
                want,
                "down from {end}"
            );
        }
        assert!(collect(from(&t, b"Rc\0", 0)).is_empty());
    }

    #[test]
    fn replayed_appends_change_nothing() {
        let t = tree();
        for n in 1..=100 {
            append(&t, b"E\0", n).unwrap();
        }
        let before: Vec<_> = t.iter().map(Result::unwrap).collect();
        for n in [1, 50, 64, 65, 100] {
            append(&t, b"E\0", n).unwrap();
        }
        let after: Vec<_> = t.iter().map(Result::unwrap).collect();
        assert_eq!(before, after);
        assert_eq!(collect(from(&t, b"E\0", 0)), (1..=100).collect::<Vec<_>>());
    }

    #[test]
    fn removing_the_newest_members_undoes_their_appends() {
        let t = tree();
        for n in 1..=70 {
            append(&t, b"E\0", n).unwrap();
        }
        let at_64: Vec<_> = {
            let probe = tree();
            for n in 1..=64 {
                append(&probe, b"E\0", n).unwrap();
            }
            probe.iter().map(Result::unwrap).collect()
        };
        for n in (65..=70).rev() {
            remove(&t, b"E\0", n).unwrap();
        }
        remove(&t, b"E\0", 99).unwrap();
        assert_eq!(t.iter().map(Result::unwrap).collect::<Vec<_>>(), at_64);
        append(&t, b"E\0", 65).unwrap();
        assert_eq!(collect(from(&t, b"E\0", 60)), vec![60, 61, 62, 63, 64, 65]);
    }

    #[test]
    fn a_name_that_extends_another_is_a_separate_list() {
        let t = tree();
        append(&t, b"Rab\0", 1).unwrap();
        append(&t, b"Ra\0", 2).unwrap();
        append(&t, b"Rab\0", 3).unwrap();
        assert_eq!(collect(from(&t, b"Ra\0", 0)), vec![2]);
        assert_eq!(collect(from(&t, b"Rab\0", 0)), vec![1, 3]);
    }
}
