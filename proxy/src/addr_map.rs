//! Hash maps keyed by IP and socket addresses, with a hash cheaper than the standard SipHash.
//!
//! The request path looks addresses up several times a request (the Service at a virtual IP,
//! the pool of connections to an endpoint, the requests in flight to a peer). SipHash takes an
//! address a few bytes at a time, about 100-150 instructions a lookup in callgrind's count
//! (benches/instructions.sh); this hash takes each of the few words an address writes in one
//! multiply. It has no key, so it is used only for addresses the mesh picked (meshd's
//! Services and endpoints, the app's allowed ports), never for what a peer chooses freely.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed by addresses; see the module.
pub type AddrMap<K, V> = HashMap<K, V, BuildHasherDefault<AddrHasher>>;

/// A `HashSet` of ports or addresses; see the module.
pub type AddrSet<K> = HashSet<K, BuildHasherDefault<AddrHasher>>;

/// One folded multiply per word written (see [`AddrHasher::add`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct AddrHasher(u64);

const K: u64 = 0xf135_7aea_2e62_a9c5;

impl AddrHasher {
    /// A folded multiply (the high half of the 128-bit product xored into the low half, as
    /// foldhash does): every bit of the word reaches the low bits the table indexes by.
    fn add(&mut self, word: u64) {
        let product = u128::from(self.0 ^ word) * u128::from(K);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(n.into());
    }

    fn write_u16(&mut self, n: u16) {
        self.add(n.into());
    }

    fn write_u32(&mut self, n: u32) {
        self.add(n.into());
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;
    use std::net::{IpAddr, SocketAddr};

    fn hash<T: std::hash::Hash>(t: &T) -> u64 {
        BuildHasherDefault::<AddrHasher>::default().hash_one(t)
    }

    /// Addresses that differ in one octet or in the port spread over a small table (the low
    /// bits of their hashes differ) at least as well as random hashes would, about 40 buckets
    /// of 64. (A plain multiply, whose low bits see only the input's low bits, put the 64
    /// addresses 10.0.0.0/26 in 10 buckets.)
    #[test]
    fn neighbouring_addresses_spread_over_a_small_table() {
        let mask = 63;
        for key in [
            (0..64u8)
                .map(|i| hash(&IpAddr::from([10, 0, 0, i])) & mask)
                .collect::<HashSet<_>>(),
            (0..64u16)
                .map(|i| hash(&SocketAddr::from(([10, 0, 0, 7], 8000 + i))) & mask)
                .collect::<HashSet<_>>(),
            (0..64u8)
                .map(|i| hash(&IpAddr::from([10, 0, i, 1])) & mask)
                .collect::<HashSet<_>>(),
        ] {
            assert!(key.len() > 32, "{} of 64 buckets used", key.len());
        }
    }

    #[test]
    fn maps_find_what_was_put_in() {
        let mut map: AddrMap<SocketAddr, u16> = AddrMap::default();
        for port in 1..=1000 {
            map.insert(([127, 0, 0, 1], port).into(), port);
        }
        for port in 1..=1000 {
            assert_eq!(map.get(&([127, 0, 0, 1], port).into()), Some(&port));
        }
        assert!(!map.contains_key(&([127, 0, 0, 2], 1).into()));
    }
}
