//! Reading the files a configuration names (secret files, CA bundles) within a size bound: a
//! path such as `/dev/zero`, or a log file named by mistake, must fail, not fill memory.

use std::io::Read;
use std::path::Path;

/// The whole content of `path`, or `None` when it holds more than `limit` bytes. Never reads
/// more than `limit + 1` bytes, whatever the file is.
pub(crate) fn read_at_most(path: &Path, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}
