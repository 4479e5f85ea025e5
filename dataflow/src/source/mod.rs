//! Sources: each worker loads its own disjoint share of the records into a [`Consolidator`].

pub mod bounded;
pub mod changes;
pub mod file;
pub mod id_split;
pub mod json;
pub mod mongo;

use std::path::PathBuf;

/// Which part of the input one worker reads: share `index` of `peers` equal shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub index: usize,
    pub peers: usize,
}

impl Share {
    /// Splits `len` bytes (or items) into `peers` contiguous ranges; this is range `index`.
    pub fn byte_range(&self, len: u64) -> (u64, u64) {
        let part = |i: usize| (len as u128 * i as u128 / self.peers as u128) as u64;
        (part(self.index), part(self.index + 1))
    }
}

/// Where the records come from.
#[derive(Clone, Debug)]
pub enum Source {
    File(PathBuf),
    Mongo(mongo::MongoSource),
}

impl Source {
    /// The source as messages and the as-of sidecar name it; a connection string without its password.
    pub fn describe(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            Source::Mongo(mongo) => mongo.describe(),
        }
    }
}
