//! The Merkle tree over a log (RFC 6962 / RFC 9162 §2.1): leaf and node
//! hashes, the frontier an appender keeps, the tree head of any size, and
//! inclusion and consistency proofs, made and checked.
//!
//! Written here, not taken from a crate: the tree math is the product (what
//! allies check each node by), it is small, and the crates that exist are
//! young and unaudited. It is tested against a naive reading of the RFC for
//! every size up to a few hundred, and Go's `sumdb/tlog` checks its proofs
//! in CI.
//!
//! Nodes are addressed as `(level, index)`: the node at level `l`, index `i`
//! is the root of the perfect subtree over leaves `[i·2^l, (i+1)·2^l)`; level
//! 0 holds the leaf hashes. Such a node never changes once its last leaf is
//! appended, so a store keeps them by that address and every proof is read
//! from them (a tree head of size `n` needs at most 64 of them).

use aws_lc_rs::digest;

/// A SHA-256 hash in the tree.
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    sha256(&[b""])
}

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// SHA-256(0x00 ‖ entry).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    sha256(&[&[0u8], entry])
}

/// SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[1u8], left, right])
}

/// Why a proof cannot be made or does not verify.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("index {index} is not in a tree of size {size}")]
    IndexBeyondSize { index: u64, size: u64 },
    #[error("size {old} is larger than size {new}")]
    SizesReversed { old: u64, new: u64 },
    #[error("the proof has {got} hashes where {want} are needed")]
    WrongLength { got: usize, want: usize },
    #[error("the proof does not lead to the root")]
    Mismatch,
    #[error("the tree has no node at level {level}, index {index}")]
    Missing { level: u8, index: u64 },
}

/// Where proofs read the nodes of perfect subtrees from.
pub trait Nodes {
    type Error: From<ProofError>;
    /// The hash at `(level, index)`; the caller asks only for nodes whose
    /// leaves are all appended.
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;
}

/// The largest power of two strictly below `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// MTH(D[a:b]) from stored nodes: a perfect, aligned range is one node;
/// anything else is split as RFC 6962 splits it (left: the largest power of
/// two below its size). Every range the RFC's recursion reaches from the
/// root has a left part that is aligned, so each perfect part is one node.
pub fn range_hash<N: Nodes>(nodes: &N, a: u64, b: u64) -> Result<Hash, N::Error> {
    let n = b - a;
    if n == 0 {
        return Ok(empty_root());
    }
    if n.is_power_of_two() && a.is_multiple_of(n) {
        return nodes.node(n.trailing_zeros() as u8, a >> n.trailing_zeros());
    }
    let k = split(n);
    let l = range_hash(nodes, a, a + k)?;
    let r = range_hash(nodes, a + k, b)?;
    Ok(node_hash(&l, &r))
}

/// The tree head of the first `size` leaves.
pub fn root<N: Nodes>(nodes: &N, size: u64) -> Result<Hash, N::Error> {
    range_hash(nodes, 0, size)
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves
/// (RFC 9162 §2.1.3.1), sibling hashes from the leaf up.
pub fn inclusion_proof<N: Nodes>(nodes: &N, index: u64, size: u64) -> Result<Vec<Hash>, N::Error> {
    if index >= size {
        return Err(ProofError::IndexBeyondSize { index, size }.into());
    }
    let mut out = Vec::new();
    // PATH(m, D[a:b]) from the root down, then reversed: leaf first.
    let (mut a, mut b, m) = (0u64, size, index);
    while b - a > 1 {
        let k = split(b - a);
        if m < a + k {
            out.push(range_hash(nodes, a + k, b)?);
            b = a + k;
        } else {
            out.push(range_hash(nodes, a, a + k)?);
            a += k;
        }
    }
    out.reverse();
    Ok(out)
}

/// The consistency proof between the trees of `old` and `new` leaves
/// (RFC 9162 §2.1.4.1); empty when `old` is 0 or equal to `new`.
pub fn consistency_proof<N: Nodes>(nodes: &N, old: u64, new: u64) -> Result<Vec<Hash>, N::Error> {
    if old > new {
        return Err(ProofError::SizesReversed { old, new }.into());
    }
    if old == 0 || old == new {
        return Ok(Vec::new());
    }
    // SUBPROOF(m, D[a:b], whole) from the root down, then reversed.
    let mut out = Vec::new();
    let (mut a, mut b, mut m, mut whole) = (0u64, new, old, true);
    loop {
        if m == b - a {
            if !whole {
                out.push(range_hash(nodes, a, b)?);
            }
            break;
        }
        let k = split(b - a);
        if m <= k {
            out.push(range_hash(nodes, a + k, b)?);
            b = a + k;
        } else {
            out.push(range_hash(nodes, a, a + k)?);
            a += k;
            m -= k;
            whole = false;
        }
    }
    out.reverse();
    Ok(out)
}

/// Checks that `leaf` is leaf `index` of the tree of `size` with head
/// `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexBeyondSize { index, size });
    }
    let want = inclusion_len(index, size);
    if proof.len() != want {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want,
        });
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(ProofError::Mismatch);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s == 0 && r == *root {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

/// Hashes in the inclusion proof of `index` in a tree of `size`.
fn inclusion_len(index: u64, size: u64) -> usize {
    let (mut a, mut b, mut n) = (0u64, size, 0usize);
    while b - a > 1 {
        let k = split(b - a);
        if index < a + k {
            b = a + k;
        } else {
            a += k;
        }
        n += 1;
    }
    n
}

/// Checks that the tree of `old` leaves with head `old_root` is a prefix of
/// the tree of `new` leaves with head `new_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::SizesReversed { old, new });
    }
    if old == new || old == 0 {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength {
                got: proof.len(),
                want: 0,
            });
        }
        // Any tree extends the empty one; equal sizes need equal heads.
        return if old == 0 || old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::Mismatch)
        };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::WrongLength { got: 0, want: 1 });
    };
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return Err(ProofError::Mismatch);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if fr == *old_root && sr == *new_root && s == 0 {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

/// The right edge of a tree: the roots of the perfect subtrees its size
/// decomposes into, largest first. An appender keeps it to learn, for each
/// leaf it adds, the nodes that leaf completes, and the tree head.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (level, hash), levels strictly decreasing.
    edge: Vec<(u8, Hash)>,
}

impl Frontier {
    /// The frontier of the tree of `size` leaves, read from its nodes.
    pub fn load<N: Nodes>(nodes: &N, size: u64) -> Result<Frontier, N::Error> {
        let mut edge = Vec::new();
        let mut start = 0u64;
        for level in (0..64u8).rev() {
            let w = 1u64 << level;
            if size & w != 0 {
                edge.push((level, nodes.node(level, start >> level)?));
                start += w;
            }
        }
        Ok(Frontier { size, edge })
    }

    /// Leaves appended.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; returns every node it completes as
    /// `(level, index, hash)`, the leaf itself first.
    pub fn push(&mut self, leaf: Hash) -> Vec<(u8, u64, Hash)> {
        let mut made = vec![(0u8, self.size, leaf)];
        self.size += 1;
        let mut top = (0u8, leaf);
        while let Some(&(level, left)) = self.edge.last() {
            if level != top.0 {
                break;
            }
            self.edge.pop();
            let level = level + 1;
            let h = node_hash(&left, &top.1);
            made.push((level, (self.size >> level) - 1, h));
            top = (level, h);
        }
        self.edge.push(top);
        made
    }

    /// The tree head at the frontier's size.
    pub fn root(&self) -> Hash {
        let mut it = self.edge.iter().rev();
        let Some(&(_, mut r)) = it.next() else {
            return empty_root();
        };
        for (_, h) in it {
            r = node_hash(h, &r);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// Nodes kept in a map, as a store keeps them.
    #[derive(Default)]
    struct Map(HashMap<(u8, u64), Hash>);

    impl Nodes for Map {
        type Error = ProofError;
        fn node(&self, level: u8, index: u64) -> Result<Hash, ProofError> {
            self.0
                .get(&(level, index))
                .copied()
                .ok_or(ProofError::Missing { level, index })
        }
    }

    fn entry(i: u64) -> Vec<u8> {
        format!("entry {i}").into_bytes()
    }

    fn built(n: u64) -> (Map, Frontier) {
        let mut map = Map::default();
        let mut f = Frontier::default();
        for i in 0..n {
            for (l, idx, h) in f.push(leaf_hash(&entry(i))) {
                assert!(map.0.insert((l, idx), h).is_none(), "node made twice");
            }
        }
        (map, f)
    }

    /// RFC 6962 §2.1, read literally, over leaf hashes.
    fn naive_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
            }
        }
    }

    fn naive_path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        let n = leaves.len();
        if n <= 1 {
            return vec![];
        }
        let k = split(n as u64) as usize;
        if m < k {
            let mut p = naive_path(m, &leaves[..k]);
            p.push(naive_root(&leaves[k..]));
            p
        } else {
            let mut p = naive_path(m - k, &leaves[k..]);
            p.push(naive_root(&leaves[..k]));
            p
        }
    }

    fn naive_subproof(m: usize, leaves: &[Hash], whole: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if whole {
                vec![]
            } else {
                vec![naive_root(leaves)]
            };
        }
        let k = split(n as u64) as usize;
        if m <= k {
            let mut p = naive_subproof(m, &leaves[..k], whole);
            p.push(naive_root(&leaves[k..]));
            p
        } else {
            let mut p = naive_subproof(m - k, &leaves[k..], false);
            p.push(naive_root(&leaves[..k]));
            p
        }
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&entry(i))).collect()
    }

    #[test]
    fn known_answers() {
        // The empty tree and a one-leaf tree, as RFC 6962 defines them.
        assert_eq!(
            hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn every_size_up_to_300_matches_the_rfc() {
        let (map, _) = built(300);
        let all = leaves(300);
        let mut f = Frontier::default();
        for n in 0..=300u64 {
            let want = naive_root(&all[..n as usize]);
            assert_eq!(root(&map, n).unwrap(), want, "root of {n}");
            assert_eq!(f.root(), want, "frontier root of {n}");
            assert_eq!(Frontier::load(&map, n).unwrap(), f, "frontier of {n}");
            for i in 0..n {
                let p = inclusion_proof(&map, i, n).unwrap();
                assert_eq!(
                    p,
                    naive_path(i as usize, &all[..n as usize]),
                    "path {i} of {n}"
                );
                verify_inclusion(i, n, &all[i as usize], &p, &want).unwrap();
            }
            for m in 0..=n {
                let p = consistency_proof(&map, m, n).unwrap();
                if m > 0 && m < n {
                    assert_eq!(p, naive_subproof(m as usize, &all[..n as usize], true));
                }
                let old = naive_root(&all[..m as usize]);
                verify_consistency(m, n, &old, &want, &p)
                    .unwrap_or_else(|e| panic!("consistency {m} → {n}: {e}"));
            }
            if n < 300 {
                f.push(all[n as usize]);
            }
        }
    }

    #[test]
    fn proofs_beyond_the_tree_are_refused() {
        let (map, _) = built(5);
        assert_eq!(
            inclusion_proof(&map, 5, 5),
            Err(ProofError::IndexBeyondSize { index: 5, size: 5 })
        );
        assert_eq!(
            consistency_proof(&map, 6, 5),
            Err(ProofError::SizesReversed { old: 6, new: 5 })
        );
        assert!(matches!(root(&map, 6), Err(ProofError::Missing { .. })));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any change to a proof, the leaf, the index or a root is refused.
        #[test]
        fn tampered_inclusion_is_refused(n in 1u64..200, i in 0u64..200, which in 0usize..64, bit in 0u8..8, what in 0u8..4) {
            let i = i % n;
            let (map, f) = built(n);
            let root_h = f.root();
            let leaf = leaf_hash(&entry(i));
            let mut proof = inclusion_proof(&map, i, n).unwrap();
            prop_assert!(verify_inclusion(i, n, &leaf, &proof, &root_h).is_ok());
            let mut leaf2 = leaf;
            let mut root2 = root_h;
            let mut i2 = i;
            match what {
                0 if !proof.is_empty() => { let w = which % proof.len(); proof[w][which % 32] ^= 1 << bit; }
                1 => leaf2[which % 32] ^= 1 << bit,
                2 => root2[which % 32] ^= 1 << bit,
                _ if n > 1 => i2 = (i + 1 + which as u64 % (n - 1)) % n,
                _ => root2[0] ^= 1,
            }
            prop_assert!(verify_inclusion(i2, n, &leaf2, &proof, &root2).is_err());
        }

        #[test]
        fn tampered_consistency_is_refused(n in 2u64..200, m in 1u64..200, which in 0usize..64, bit in 0u8..8, what in 0u8..3) {
            let m = 1 + m % (n - 1);
            let (map, f) = built(n);
            let new_root = f.root();
            let old_root = root(&map, m).unwrap();
            let mut proof = consistency_proof(&map, m, n).unwrap();
            prop_assert!(verify_consistency(m, n, &old_root, &new_root, &proof).is_ok());
            let (mut o, mut r) = (old_root, new_root);
            match what {
                0 if !proof.is_empty() => { let w = which % proof.len(); proof[w][which % 32] ^= 1 << bit; }
                1 => o[which % 32] ^= 1 << bit,
                _ => r[which % 32] ^= 1 << bit,
            }
            prop_assert!(verify_consistency(m, n, &o, &r, &proof).is_err());
        }

        /// A log that drops or alters an entry cannot prove consistency
        /// with the head it had before.
        #[test]
        fn an_altered_log_is_inconsistent(n in 2u64..150, m in 1u64..150, at in 0u64..150) {
            let m = 1 + m % (n - 1);
            let at = at % m;
            let (map, _) = built(m);
            let old_root = root(&map, m).unwrap();
            let mut other = Map::default();
            let mut f = Frontier::default();
            for i in 0..n {
                let e = if i == at { b"altered".to_vec() } else { entry(i) };
                for (l, idx, h) in f.push(leaf_hash(&e)) {
                    other.0.insert((l, idx), h);
                }
            }
            let proof = consistency_proof(&other, m, n).unwrap();
            prop_assert!(verify_consistency(m, n, &old_root, &f.root(), &proof).is_err());
        }
    }
}
