//! The deny lists as lbd writes them: an LPM trie per family and the filter in front of them
//! (lb_common::deny), changed so that a source is never let through by a stale filter.
use std::{collections::BTreeSet, net::IpAddr, path::Path};

use aya::maps::{Array, LpmTrie, Map, MapData, lpm_trie::Key};
use ipnet::IpNet;
use lb_common::deny::{DENY_FILTER_MAP, DENY_FILTER_WORDS, DENY_V4_MAP, DENY_V6_MAP, filter_blocks};

use crate::dataplane::{
    Result,
    tables::{addr_of, open},
};

/// The pinned deny maps.
pub(super) struct DenyLists {
    v4: LpmTrie<MapData, [u8; 4], u32>,
    v6: LpmTrie<MapData, [u8; 16], u32>,
    filter: DenyFilter,
}

impl DenyLists {
    pub(super) fn open(pin_dir: &Path) -> Result<DenyLists> {
        Ok(DenyLists {
            v4: LpmTrie::try_from(Map::LpmTrie(open(pin_dir, DENY_V4_MAP)?))?,
            v6: LpmTrie::try_from(Map::LpmTrie(open(pin_dir, DENY_V6_MAP)?))?,
            filter: DenyFilter::open(pin_dir)?,
        })
    }

    /// Makes the deny lists hold `deny`, one line per change.
    pub(super) fn apply(&mut self, deny: &[IpNet]) -> Result<Vec<String>> {
        let (mut want4, mut want6) = (BTreeSet::new(), BTreeSet::new());
        for net in deny {
            match net {
                IpNet::V4(n) => want4.insert((n.prefix_len() as u32, n.network().octets())),
                IpNet::V6(n) => want6.insert((n.prefix_len() as u32, n.network().octets())),
            };
        }
        // While the tries change, the filter passes both the old and the new prefixes' blocks
        // on to them: a source is never let through by a stale filter.
        let want = DenyFilter::words_for(deny);
        let mut have = self.filter.read()?;
        let both: Vec<u64> = have.iter().zip(&want).map(|(old, new)| old | new).collect();
        self.filter.write(&mut have, &both)?;
        let mut changes = sync_trie(&mut self.v4, &want4, |a| std::net::Ipv4Addr::from(a).into())?;
        changes.extend(sync_trie(&mut self.v6, &want6, |a| std::net::Ipv6Addr::from(a).into())?);
        self.filter.write(&mut have, &want)?;
        Ok(changes)
    }
}

/// The DENY_FILTER array (lb_common::deny).
struct DenyFilter(Array<MapData, u64>);

impl DenyFilter {
    fn open(pin_dir: &Path) -> Result<DenyFilter> {
        Ok(DenyFilter(Array::try_from(Map::Array(open(pin_dir, DENY_FILTER_MAP)?))?))
    }

    /// The words the array holds.
    fn read(&self) -> Result<Vec<u64>> {
        Ok((0..DENY_FILTER_WORDS).map(|i| self.0.get(&i, 0)).collect::<Result<_, _>>()?)
    }

    /// The words that mark the blocks of `deny`.
    fn words_for(deny: &[IpNet]) -> Vec<u64> {
        let mut words = vec![0u64; DENY_FILTER_WORDS as usize];
        for net in deny {
            for block in filter_blocks(&addr_of(net.network()), net.prefix_len() as u32) {
                words[block as usize / 64] |= 1 << (block % 64);
            }
        }
        words
    }

    /// Makes the array hold `words`, given that it holds `have`: writes the words that differ.
    fn write(&mut self, have: &mut [u64], words: &[u64]) -> Result<()> {
        for (i, (old, new)) in have.iter_mut().zip(words).enumerate() {
            if old != new {
                self.0.set(i as u32, new, 0)?;
                *old = *new;
            }
        }
        Ok(())
    }
}

/// Makes an LPM deny trie hold exactly `want` (prefix length, address), one line per change.
fn sync_trie<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], u32>,
    want: &BTreeSet<(u32, [u8; N])>,
    ip: impl Fn([u8; N]) -> IpAddr,
) -> Result<Vec<String>>
where
    [u8; N]: aya::Pod,
{
    let have: BTreeSet<(u32, [u8; N])> =
        trie.keys().filter_map(|k| k.ok()).map(|k| (k.prefix_len(), k.data())).collect();
    let mut changes = Vec::new();
    for (len, data) in have.difference(want) {
        trie.remove(&Key::new(*len, *data))?;
        changes.push(format!("deny {}/{len} removed", ip(*data)));
    }
    for (len, data) in want.difference(&have) {
        trie.insert(&Key::new(*len, *data), &1, 0)?;
        changes.push(format!("deny {}/{len} added", ip(*data)));
    }
    Ok(changes)
}
