//! Evidence an auditor checks without trusting prodgate's code: a real
//! server signs checkpoints with a key from `prodgate keygen`; this test
//! verifies the note's Ed25519 signature, the Merkle root, inclusion and
//! consistency proofs with its own implementation of the documented formats
//! (C2SP signed note and tlog-checkpoint, RFC 9162), then round-trips an
//! export bundle through `prodgate verify-export` and tampers with it.

mod support;

use base64::Engine;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use prodgate::pb::{
    self, GetCheckpointRequest, GetConsistencyProofRequest, GetInclusionProofRequest,
    HistoryRequest,
};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;
use support::registry::TestRegistry;
use support::server::{TestServer, standard_config, token};
use support::{approve, expected_hash, history, request_to};
use tonic::Code;

const ORIGIN: &str = "prodgate.test/audit";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn sha(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn leaf(entry_hash: &[u8; 32]) -> [u8; 32] {
    sha(&[&[0], entry_hash])
}

fn node(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    sha(&[&[1], l, r])
}

/// RFC 9162 §2.1.1.
fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => sha(&[]),
        1 => leaves[0],
        n => {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            node(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// RFC 9162 §2.1.3.2.
fn inclusion_ok(index: u64, size: u64, leaf: [u8; 32], proof: &[[u8; 32]], root: [u8; 32]) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s, mut r) = (index, size - 1, leaf);
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == root
}

/// RFC 9162 §2.1.4.2.
fn consistency_ok(
    first: u64,
    second: u64,
    first_root: [u8; 32],
    second_root: [u8; 32],
    proof: &[[u8; 32]],
) -> bool {
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    let mut path = proof.to_vec();
    if first.is_power_of_two() {
        path.insert(0, first_root);
    }
    let Some((&start, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (start, start);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node(c, &fr);
            sr = node(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == first_root && sr == second_root && s == 0
}

/// Checks a C2SP checkpoint note signed by `vkey` (`name+hexid+base64(0x01
/// ‖ key)`) and returns its origin, size and root.
fn check_note(note: &str, vkey: &str) -> (String, u64, [u8; 32]) {
    let mut parts = vkey.trim().splitn(3, '+');
    let (name, id_hex, key) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let key = B64.decode(key).unwrap();
    assert_eq!(key[0], 0x01, "an Ed25519 verifier key");
    let public: [u8; 32] = key[1..].try_into().unwrap();
    let id = &sha(&[name.as_bytes(), b"\n", &[1], &public])[..4];
    assert_eq!(hex::encode(id), id_hex, "the key id is the documented one");
    let (body, sigs) = note
        .split_once("\n\n")
        .expect("text, blank line, signatures");
    let body = format!("{body}\n");
    let line = sigs.lines().next().expect("a signature line");
    let rest = line
        .strip_prefix("\u{2014} ")
        .expect("an em dash and a space");
    let (signer, blob) = rest.split_once(' ').unwrap();
    assert_eq!(signer, name);
    let blob = B64.decode(blob).unwrap();
    assert_eq!(&blob[..4], id, "the signature names the key");
    let sig = Signature::from_bytes(&blob[4..].try_into().unwrap());
    VerifyingKey::from_bytes(&public)
        .unwrap()
        .verify(body.as_bytes(), &sig)
        .expect("the note's signature verifies");
    let mut lines = body.lines();
    let origin = lines.next().unwrap().to_owned();
    let size = lines.next().unwrap().parse().unwrap();
    let root = B64
        .decode(lines.next().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    (origin, size, root)
}

fn hashes(hex_list: &[String]) -> Vec<[u8; 32]> {
    hex_list
        .iter()
        .map(|h| hex::decode(h).unwrap().try_into().unwrap())
        .collect()
}

fn cli(server: &TestServer, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_prodgate"))
        .args(args)
        .env("PRODGATE_SERVER", format!("http://{}", server.addr))
        .env("PRODGATE_TOKEN", token("alice"))
        .output()
        .expect("run prodgate")
}

fn keygen(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_prodgate"))
        .args(["keygen", "--name", "audit.test", "--out"])
        .arg(dir)
        .output()
        .expect("run keygen");
    assert!(out.status.success(), "{out:?}");
    let private = std::fs::read_to_string(dir.join("audit.test.key")).unwrap();
    assert!(private.starts_with("PRIVATE+KEY+audit.test+"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("audit.test.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the private key is for its owner only");
    }
    std::fs::read_to_string(dir.join("audit.test.pub")).unwrap()
}

// Multi-threaded: the dropped clients' connections close while this thread
// blocks in `terminate`, so the server stops without its grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn checkpoints_and_proofs_verify_independently_and_exports_round_trip() {
    let keys = tempfile::tempdir().unwrap();
    let vkey = keygen(keys.path());
    let published = keys.path().join("checkpoints.txt");
    let registry = TestRegistry::start().await;
    let config = format!(
        "{}\n[checkpoint]\norigin = \"{ORIGIN}\"\nkey_file = {:?}\n[[checkpoint.publish]]\ninterval = \"100ms\"\nfile = {:?}\n",
        standard_config(&registry.host),
        keys.path().join("audit.test.key").display().to_string(),
        published.display().to_string(),
    );
    let mut server = TestServer::start(&config);
    let repo = format!("{}/app", registry.host);
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    for i in 0..4 {
        // A new image each time: production already carries the last one.
        registry
            .push_image("app", Some("staging"), 1024, 1 + i)
            .await;
        let p = alice
            .request_promotion(request_to(&repo, "staging", "production"))
            .await
            .unwrap()
            .into_inner();
        bob.approve(approve(&p.id)).await.unwrap();
    }
    support::wait_for_state(
        &mut alice,
        &format!("{}", 4),
        pb::PromotionState::Promoted,
        std::time::Duration::from_secs(10),
    )
    .await;

    // The checkpoint: signature, origin, and the root recomputed from the
    // entries' hashes (each recomputed from its fields).
    let cp = alice
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    let (origin, size, root) = check_note(&cp.note, &vkey);
    assert_eq!((origin.as_str(), size), (ORIGIN, cp.size));
    assert_eq!(hex::encode(root), cp.root_hash);
    let entries: Vec<pb::AuditEntry> = history(&mut alice, HistoryRequest::default())
        .await
        .into_iter()
        .filter(|e| e.sequence <= size)
        .collect();
    assert_eq!(entries.len() as u64, size);
    assert!(size >= 10, "{size}");
    let leaves: Vec<[u8; 32]> = entries
        .iter()
        .map(|e| {
            assert_eq!(e.hash, expected_hash(e));
            leaf(&hex::decode(&e.hash).unwrap().try_into().unwrap())
        })
        .collect();
    assert_eq!(mth(&leaves), root);

    // Inclusion proofs of the first, a middle and the last entry.
    for seq in [1, size / 2, size] {
        let p = alice
            .get_inclusion_proof(GetInclusionProofRequest {
                sequence: seq,
                tree_size: size,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((p.leaf_index, p.tree_size), (seq - 1, size));
        let proof = hashes(&p.hashes);
        assert!(
            inclusion_ok(seq - 1, size, leaves[(seq - 1) as usize], &proof, root),
            "entry {seq}"
        );
        // A tampered entry (its fields changed, its hash recomputed) is not
        // what the proof proves.
        let mut bad = entries[(seq - 1) as usize].clone();
        bad.comment.push('!');
        let bad_leaf = leaf(
            &hex::decode(expected_hash(&bad))
                .unwrap()
                .try_into()
                .unwrap(),
        );
        assert!(!inclusion_ok(seq - 1, size, bad_leaf, &proof, root));
    }
    // Consistency proofs between sizes, against roots recomputed here.
    for (from, to) in [(1, size), (3, 7), (size / 2, size), (8, size), (size, size)] {
        let p = alice
            .get_consistency_proof(GetConsistencyProofRequest {
                from_size: from,
                to_size: to,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((p.from_size, p.to_size), (from, to));
        let proof = hashes(&p.hashes);
        let (a, b) = (mth(&leaves[..from as usize]), mth(&leaves[..to as usize]));
        assert!(consistency_ok(from, to, a, b, &proof), "{from} -> {to}");
        if from < to {
            let mut wrong = a;
            wrong[0] ^= 1;
            assert!(!consistency_ok(from, to, wrong, b, &proof));
        }
    }
    // Out of range and malformed requests say so.
    let e = alice
        .get_inclusion_proof(GetInclusionProofRequest {
            sequence: size + 100,
            tree_size: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    let e = alice
        .get_consistency_proof(GetConsistencyProofRequest {
            from_size: 0,
            to_size: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // The CLI: prove an entry, export, verify offline; a tampered bundle
    // and a wrong key are refused.
    let pubfile = keys.path().join("audit.test.pub");
    let pubfile = pubfile.to_str().unwrap();
    let proved = cli(&server, &["prove", "3", "--verifier-key", pubfile]);
    assert!(proved.status.success(), "{proved:?}");
    // -o json: what was checked, for a script to keep.
    let proved = cli(
        &server,
        &["prove", "3", "--verifier-key", pubfile, "-o", "json"],
    );
    assert!(proved.status.success(), "{proved:?}");
    let j: serde_json::Value = serde_json::from_slice(&proved.stdout).expect("one JSON object");
    assert_eq!(j["leafIndex"], "2", "{j}");
    let tree_size: u64 = j["treeSize"].as_str().unwrap().parse().unwrap();
    assert!(tree_size >= size, "{j}");
    assert!(!j["hashes"].as_array().unwrap().is_empty(), "{j}");
    assert!(j["note"].as_str().unwrap().starts_with(ORIGIN), "{j}");
    assert_eq!(j["entryHash"], entries[2].hash, "{j}");

    // A consistency proof between two sizes, checked by the CLI against
    // roots it recomputed (and bound to the signed checkpoint) ...
    let consistent = cli(
        &server,
        &[
            "consistency",
            "--from",
            "3",
            "--to",
            "7",
            "--verifier-key",
            pubfile,
            "-o",
            "json",
        ],
    );
    assert!(consistent.status.success(), "{consistent:?}");
    let j: serde_json::Value = serde_json::from_slice(&consistent.stdout).unwrap();
    assert_eq!(
        (j["fromSize"].as_str(), j["toSize"].as_str()),
        (Some("3"), Some("7"))
    );
    assert_eq!(j["fromRoot"], hex::encode(mth(&leaves[..3])), "{j}");
    assert_eq!(j["toRoot"], hex::encode(mth(&leaves[..7])), "{j}");
    // ... or against a root the auditor kept: right for its size, wrong
    // for any other.
    let root4 = hex::encode(mth(&leaves[..4]));
    let kept = cli(
        &server,
        &[
            "consistency",
            "--from",
            "4",
            "--from-root",
            &root4,
            "--verifier-key",
            pubfile,
        ],
    );
    assert!(kept.status.success(), "{kept:?}");
    assert!(
        String::from_utf8_lossy(&kept.stdout).starts_with("ok: "),
        "{kept:?}"
    );
    let tampered_size = cli(
        &server,
        &[
            "consistency",
            "--from",
            "5",
            "--from-root",
            &root4,
            "--verifier-key",
            pubfile,
        ],
    );
    assert_eq!(tampered_size.status.code(), Some(1), "{tampered_size:?}");
    assert!(
        String::from_utf8_lossy(&tampered_size.stderr).contains("NOT VERIFIED"),
        "{tampered_size:?}"
    );
    // The checkpoint command takes the same flag.
    let checked = cli(&server, &["checkpoint", "--verifier-key", pubfile]);
    assert!(checked.status.success(), "{checked:?}");
    // An export past the end of the log has nothing to prove.
    let beyond = (size + 100).to_string();
    let empty_export = keys.path().join("empty.jsonl");
    let past = cli(
        &server,
        &[
            "export",
            "--since",
            &beyond,
            "--out",
            empty_export.to_str().unwrap(),
        ],
    );
    assert_eq!(past.status.code(), Some(1), "{past:?}");
    assert!(
        String::from_utf8_lossy(&past.stderr).contains("nothing"),
        "{past:?}"
    );
    assert!(!empty_export.exists());
    let bundle = keys.path().join("bundle.jsonl");
    let exported = cli(
        &server,
        &["export", "--since", "3", "--out", bundle.to_str().unwrap()],
    );
    assert!(exported.status.success(), "{exported:?}");
    let verified = cli(
        &server,
        &[
            "verify-export",
            bundle.to_str().unwrap(),
            "--verifier-key",
            pubfile,
        ],
    );
    assert!(verified.status.success(), "{verified:?}");
    // --key, as earlier versions named it, still works.
    let old_flag = cli(
        &server,
        &["verify-export", bundle.to_str().unwrap(), "--key", pubfile],
    );
    assert!(old_flag.status.success(), "{old_flag:?}");
    assert!(
        String::from_utf8_lossy(&verified.stdout).starts_with("ok: entries 3.."),
        "{verified:?}"
    );
    let text = std::fs::read_to_string(&bundle).unwrap();
    // The checkpoint alone: a bundle that proves nothing fails.
    let bare = keys.path().join("bare.jsonl");
    std::fs::write(&bare, format!("{}\n", text.lines().next().unwrap())).unwrap();
    let nothing = cli(
        &server,
        &[
            "verify-export",
            bare.to_str().unwrap(),
            "--verifier-key",
            pubfile,
        ],
    );
    assert_eq!(nothing.status.code(), Some(1), "{nothing:?}");
    assert!(
        String::from_utf8_lossy(&nothing.stderr).contains("no entries"),
        "{nothing:?}"
    );
    let tampered = keys.path().join("tampered.jsonl");
    std::fs::write(&tampered, text.replacen("ship staging", "ship Staging", 1)).unwrap();
    assert_ne!(std::fs::read_to_string(&tampered).unwrap(), text);
    let refused = cli(
        &server,
        &[
            "verify-export",
            tampered.to_str().unwrap(),
            "--key",
            pubfile,
        ],
    );
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("NOT VERIFIED"),
        "{refused:?}"
    );
    let other = tempfile::tempdir().unwrap();
    let other_key = keygen(other.path());
    let wrong = cli(
        &server,
        &[
            "verify-export",
            bundle.to_str().unwrap(),
            "--key",
            other_key.trim(),
        ],
    );
    assert!(!wrong.status.success(), "{wrong:?}");

    // Published copies: the last one, after a clean stop, is the final head.
    let final_size = alice
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner()
        .size;
    drop((alice, bob));
    assert_eq!(server.terminate(), Some(0), "{}", server.log());
    let copies = std::fs::read_to_string(&published).unwrap();
    // Notes follow each other, a blank line apart; each starts with the origin.
    let at = copies
        .rfind(&format!("{ORIGIN}\n"))
        .expect("a published checkpoint");
    let (_, published_size, _) = check_note(copies[at..].trim_end_matches('\n'), &vkey);
    assert_eq!(published_size, final_size);

    // A restart publishes no checkpoint the file already holds (only a
    // larger one, if the log grew).
    server.kill_and_restart();
    let mut alice = server.client("alice").await;
    let restarted_size = alice
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner()
        .size;
    drop(alice);
    assert_eq!(server.terminate(), Some(0), "{}", server.log());
    let copies = std::fs::read_to_string(&published).unwrap();
    let sizes = published_sizes(&copies);
    assert!(
        sizes.windows(2).all(|w| w[0] < w[1]),
        "a size published twice: {sizes:?}"
    );
    assert_eq!(sizes.last(), Some(&restarted_size), "{sizes:?}");
}

/// The sizes of the published notes, in file order.
fn published_sizes(copies: &str) -> Vec<u64> {
    let mut lines = copies.lines();
    let mut sizes = Vec::new();
    while let Some(line) = lines.next() {
        if line == ORIGIN {
            sizes.push(lines.next().unwrap().parse().unwrap());
        }
    }
    sizes
}
