//! A deterministic byte stream, so a receiver can check every byte of a large transfer without
//! either side holding it in memory.

/// An endless pseudo-random byte sequence (xorshift64*), the same for the same seed.
#[derive(Clone, Debug)]
pub struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed | 1,
            word: [0; 8],
            used: 8,
        }
    }

    /// Writes the next `out.len()` bytes of the sequence into `out`.
    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            if self.used == 8 {
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                self.word = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_regardless_of_chunking() {
        let mut whole = vec![0u8; 1000];
        Pattern::new(7).fill(&mut whole);
        let mut chunked = vec![0u8; 1000];
        let mut p = Pattern::new(7);
        for chunk in chunked.chunks_mut(13) {
            p.fill(chunk);
        }
        assert_eq!(whole, chunked);
        let mut other = vec![0u8; 1000];
        Pattern::new(8).fill(&mut other);
        assert_ne!(whole, other);
    }
}
