//! Rendezvous (highest-random-weight) hashing: which server owns a routing key.
//!
//! A call with a routing key (a user id, a shard name) should land on the same server every
//! time, so that server's caches stay warm, and when servers come and go as few keys as
//! possible should move. Rendezvous hashing gives both without any shared state: every
//! client scores each server against the key with the same hash and picks the highest
//! score. Removing a server moves only the keys it owned; adding one takes about `1/n` of
//! the keys, evenly from the others. The rest of the ranking is the fallback order when
//! the owner is unavailable.
//!
//! Every client, in every language and on every platform, must agree on the owner, so the
//! hash is fixed here and pinned by a test: FNV-1a over the server id's length, the id and
//! the key, followed by the splitmix64 finaliser (FNV alone mixes its last bytes poorly).
//! It is not a keyed hash: keys chosen by an adversary can pile onto one server.
//!
//! Scoring costs O(n) for [`owner`] and O(n log n) for [`ranked`], with n servers; neither
//! keeps any state.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The score of `server` for `key`: a stable 64-bit hash of both.
///
/// Stable across runs, processes, platforms and versions of this crate (a test pins
/// known values), so other implementations can reproduce it: FNV-1a 64 over the server
/// id's byte length as 8 little-endian bytes, then the id's bytes, then the key's bytes,
/// finished with splitmix64's mixing function. The length prefix keeps `("ab", "c")` and
/// `("a", "bc")` apart.
pub fn score(server: &str, key: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    let len = server.len() as u64;
    for byte in len.to_le_bytes().iter().chain(server.as_bytes()).chain(key) {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(FNV_PRIME);
    }
    mix64(h)
}

/// splitmix64's finaliser: every input bit affects every output bit.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The server that owns `key`: the one with the highest [`score`], or `None` when
/// `servers` is empty.
///
/// The order of `servers` does not matter. Equal scores (in practice only duplicate ids)
/// go to the smaller id, then to the earlier entry.
///
/// ```
/// use meridian::region::rendezvous;
///
/// let servers = ["10.0.0.1:4433", "10.0.0.2:4433", "10.0.0.3:4433"];
/// let a = rendezvous::owner(b"user-42", &servers);
/// let b = rendezvous::owner(b"user-42", &servers);
/// assert!(a.is_some());
/// assert_eq!(a, b);
/// ```
pub fn owner<'a, S: AsRef<str>>(key: &[u8], servers: &'a [S]) -> Option<&'a S> {
    servers
        .iter()
        .map(|s| (score(s.as_ref(), key), s))
        .reduce(|best, next| if beats(&next, &best) { next } else { best })
        .map(|(_, s)| s)
}

/// All of `servers` ranked for `key`: the owner first, then the server that takes over
/// if the owner is gone, and so on.
///
/// Removing the owner from `servers` makes the second entry the new owner, and the rest
/// keep their order. Ties are broken as in [`owner`].
pub fn ranked<'a, S: AsRef<str>>(key: &[u8], servers: &'a [S]) -> Vec<&'a S> {
    let mut scored: Vec<(u64, usize, &'a S)> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| (score(s.as_ref(), key), i, s))
        .collect();
    scored.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| a.2.as_ref().cmp(b.2.as_ref()))
            .then_with(|| a.1.cmp(&b.1))
    });
    scored.into_iter().map(|(_, _, s)| s).collect()
}

/// Whether `a` ranks above `b` (`b` came first in the input).
fn beats<S: AsRef<str>>(a: &(u64, &S), b: &(u64, &S)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1.as_ref() < b.1.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn servers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:4433")).collect()
    }

    fn keys(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("key-{i}").into_bytes()).collect()
    }

    #[test]
    fn score_is_pinned() {
        // Part of the routing contract: other implementations must reproduce these
        // (they were computed by an independent implementation). Changing the hash
        // moves every key.
        assert_eq!(score("", b""), 0x813f_0174_a236_7c13);
        assert_eq!(score("a", b"k"), 0xdde3_5d4a_4f67_d7d6);
        assert_eq!(score("eu-west:1", b"user-42"), 0x9f4d_3019_4cc8_347d);
        assert_eq!(score("10.0.0.1:4433", b"key-0"), 0x1b47_e28f_1fc4_520e);
    }

    #[test]
    fn empty_server_list_has_no_owner() {
        let none: [&str; 0] = [];
        assert_eq!(owner(b"k", &none), None);
        assert!(ranked(b"k", &none).is_empty());
    }

    #[test]
    fn same_key_same_owner() {
        let s = servers(5);
        for k in keys(200) {
            let first = owner(&k, &s);
            for _ in 0..3 {
                assert_eq!(owner(&k, &s), first);
            }
        }
    }

    #[test]
    fn owner_ignores_list_order() {
        let s = servers(7);
        let mut reversed = s.clone();
        reversed.reverse();
        for k in keys(500) {
            assert_eq!(owner(&k, &s), owner(&k, &reversed));
            assert_eq!(ranked(&k, &s), ranked(&k, &reversed));
        }
    }

    #[test]
    fn owner_is_first_of_ranked() {
        let s = servers(6);
        for k in keys(300) {
            let r = ranked(&k, &s);
            assert_eq!(r.len(), s.len());
            assert_eq!(Some(r[0]), owner(&k, &s));
        }
    }

    #[test]
    fn keys_spread_evenly_over_three_servers() {
        let s = servers(3);
        let mut counts: HashMap<&String, usize> = HashMap::new();
        for k in keys(10_000) {
            if let Some(o) = owner(&k, &s) {
                *counts.entry(o).or_default() += 1;
            }
        }
        assert_eq!(counts.len(), 3);
        let even = 10_000.0 / 3.0;
        for (server, n) in counts {
            let off = (n as f64 - even).abs() / even;
            assert!(off < 0.10, "{server} got {n} keys, {off:.3} off even");
        }
    }

    #[test]
    fn removing_a_server_moves_only_its_keys() {
        let s = servers(5);
        let removed = s[2].clone();
        let rest: Vec<String> = s.iter().filter(|x| **x != removed).cloned().collect();
        let mut moved = 0;
        for k in keys(5_000) {
            let before = owner(&k, &s).cloned();
            let after = owner(&k, &rest).cloned();
            if before.as_ref() != Some(&removed) {
                assert_eq!(before, after, "a key not owned by the removed server moved");
            } else {
                moved += 1;
                // Its keys go to their second choice.
                assert_eq!(after.as_ref(), Some(ranked(&k, &s)[1]));
            }
        }
        assert!(moved > 0);
    }

    #[test]
    fn adding_a_server_moves_about_one_nth() {
        let s = servers(4);
        let mut grown = s.clone();
        grown.push("10.0.0.99:4433".to_string());
        let total = 10_000;
        let mut moved = 0;
        for k in keys(total) {
            let before = owner(&k, &s);
            let after = owner(&k, &grown);
            if before != after {
                moved += 1;
                // Every moved key went to the new server.
                assert_eq!(after.map(String::as_str), Some("10.0.0.99:4433"));
            }
        }
        let share = moved as f64 / total as f64;
        assert!(
            (share - 0.2).abs() < 0.02,
            "moved {share:.3}, expected about 1/5"
        );
    }

    #[test]
    fn ranked_fallback_matches_owner_without_the_first() {
        let s = servers(4);
        for k in keys(300) {
            let r = ranked(&k, &s);
            let without: Vec<String> = s.iter().filter(|x| *x != r[0]).cloned().collect();
            assert_eq!(owner(&k, &without), Some(r[1]));
            let rest = ranked(&k, &without);
            assert_eq!(rest, r[1..].to_vec());
        }
    }

    #[test]
    fn length_prefix_separates_id_and_key() {
        assert_ne!(score("ab", b"c"), score("a", b"bc"));
    }

    #[test]
    fn duplicate_ids_pick_the_first_entry() {
        let s = ["x".to_string(), "x".to_string()];
        let o = owner(b"k", &s);
        assert!(o.is_some_and(|o| std::ptr::eq(o, &s[0])));
        let r = ranked(b"k", &s);
        assert!(std::ptr::eq(r[0], &s[0]));
    }

    #[test]
    fn works_with_str_and_string() {
        let owned = servers(3);
        let borrowed: Vec<&str> = owned.iter().map(String::as_str).collect();
        for k in keys(100) {
            assert_eq!(
                owner(&k, &owned).map(String::as_str),
                owner(&k, &borrowed).copied()
            );
        }
    }
}
