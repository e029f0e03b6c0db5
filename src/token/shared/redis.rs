//! The shared cache's Redis operations: four Lua scripts, each one atomic step of the fleet's
//! protocol. Every write stamps the entry with Redis's `TIME` (`t`, in milliseconds), and
//! every read returns Redis's `TIME` beside it: the entry's age by the one clock all replicas
//! share.
//!
//! Key names put the entry name in braces (`prefix:{name}` and `prefix:{name}:lock`), so an
//! entry and its lock always share a Redis Cluster slot.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{RedisResult, Script};

use super::entry::{Fields, Sealed};

/// Take the fleet lock unless someone holds it, after dropping the token a replica saw
/// rejected if the entry still holds that very token. Returns whether the lock was taken, if
/// not its holder and remaining life, and the entry as it is now. A lock without an expiry
/// (not written by a sidecar) is given ours, so nothing can hold the fleet forever.
///
/// KEYS: entry, lock. ARGV: owner, lock ttl (ms), rejected token id (or empty).
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'id') == ARGV[3] then
            redis.call('HSET', KEYS[1], 'id', '')
        end
        local taken = redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2])
        local holder, ttl = '', 0
        if not taken then
            holder = redis.call('GET', KEYS[2])
            ttl = redis.call('PTTL', KEYS[2])
            if ttl < 0 then
                redis.call('PEXPIRE', KEYS[2], ARGV[2])
                ttl = tonumber(ARGV[2])
            end
        end
        local f = redis.call('HMGET', KEYS[1], 'v', 'id', 'seal', 't')
        local now = redis.call('TIME')
        return {taken and 1 or 0, holder, ttl, {f[1], f[2], f[3], f[4], now[1], now[2]}}
        ",
    )
});

/// The entry as it stands, and Redis's `TIME`.
///
/// KEYS: entry.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local f = redis.call('HMGET', KEYS[1], 'v', 'id', 'seal', 't')
        local now = redis.call('TIME')
        return {f[1], f[2], f[3], f[4], now[1], now[2]}
        ",
    )
});

/// Release the lock if we still own it (compare-and-delete).
///
/// KEYS: lock. ARGV: owner.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('GET', KEYS[1]) == ARGV[1] then
            return redis.call('DEL', KEYS[1])
        end
        return 0
        ",
    )
});

/// Write the entry if nobody wrote it since we read version `expected` (compare-and-set),
/// release our lock either way, and tell the fleet. Returns 1 if written.
///
/// KEYS: entry, lock. ARGV: owner, expected version (empty: no entry), id, seal, entry ttl
/// (ms), channel, name.
static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local current = redis.call('HGET', KEYS[1], 'v') or ''
        local written = 0
        if current == ARGV[2] then
            local now = redis.call('TIME')
            local t = now[1] * 1000 + math.floor(now[2] / 1000)
            redis.call('HINCRBY', KEYS[1], 'v', 1)
            redis.call('HSET', KEYS[1], 'id', ARGV[3], 'seal', ARGV[4], 't', string.format('%d', t))
            redis.call('PEXPIRE', KEYS[1], ARGV[5])
            written = 1
        end
        if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
        if written == 1 then redis.call('PUBLISH', ARGV[6], ARGV[7]) end
        return written
        ",
    )
});

/// The Redis names of one entry.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// The entry name alone: what notifications carry.
    pub name: String,
    pub entry: String,
    pub lock: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str, name: &str) -> Keys {
        Keys {
            name: name.to_owned(),
            entry: format!("{prefix}:{{{name}}}"),
            lock: format!("{prefix}:{{{name}}}:lock"),
        }
    }
}

/// The fleet lock, as a replica that did not get it found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    /// The holder's owner value: tells one holder's lock from the next one's.
    pub owner: String,
    pub remaining: Duration,
}

/// What [`acquire`] found.
#[derive(Debug)]
pub(crate) enum Acquired {
    /// The lock is ours, and this is the entry as it stood when we took it.
    Ours(Fields),
    /// Someone holds it for this much longer; the entry as it stands.
    Theirs(Held, Fields),
}

/// An entry's fields as a script returns them, and Redis's `TIME` (seconds, microseconds).
type Raw = (
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    Option<String>,
    String,
    String,
);

/// The entry's age: Redis's time now less its stamp, never negative.
fn fields((version, id, seal, t, secs, micros): Raw) -> Fields {
    let now = secs.parse::<u64>().ok().zip(micros.parse::<u64>().ok());
    let now_ms = now.map(|(s, us)| s.saturating_mul(1000).saturating_add(us / 1000));
    let stamp = t.and_then(|t| t.parse::<u64>().ok());
    let age = now_ms
        .zip(stamp)
        .map(|(now, t)| Duration::from_millis(now.saturating_sub(t)));
    Fields {
        version,
        id,
        seal,
        age,
    }
}

pub(crate) async fn read(conn: &mut ConnectionManager, keys: &Keys) -> RedisResult<Fields> {
    let raw: Raw = READ.key(&keys.entry).invoke_async(conn).await?;
    Ok(fields(raw))
}

pub(crate) async fn acquire(
    conn: &mut ConnectionManager,
    keys: &Keys,
    owner: &str,
    ttl: Duration,
    rejected: Option<&str>,
) -> RedisResult<Acquired> {
    let (taken, owner_now, remaining, raw): (i64, String, i64, Raw) = ACQUIRE
        .key(&keys.entry)
        .key(&keys.lock)
        .arg(owner)
        .arg(millis(ttl))
        .arg(rejected.unwrap_or(""))
        .invoke_async(conn)
        .await?;
    let fields = fields(raw);
    Ok(match taken {
        1 => Acquired::Ours(fields),
        _ => Acquired::Theirs(
            Held {
                owner: owner_now,
                remaining: Duration::from_millis(u64::try_from(remaining).unwrap_or(0)),
            },
            fields,
        ),
    })
}

pub(crate) async fn release(
    conn: &mut ConnectionManager,
    keys: &Keys,
    owner: &str,
) -> RedisResult<()> {
    let _: i64 = RELEASE
        .key(&keys.lock)
        .arg(owner)
        .invoke_async(conn)
        .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn publish(
    conn: &mut ConnectionManager,
    keys: &Keys,
    owner: &str,
    expected: Option<&str>,
    sealed: &Sealed,
    ttl: Duration,
    channel: &str,
) -> RedisResult<bool> {
    let written: i64 = PUBLISH
        .key(&keys.entry)
        .key(&keys.lock)
        .arg(owner)
        .arg(expected.unwrap_or(""))
        .arg(&sealed.id)
        .arg(&sealed.seal)
        .arg(millis(ttl))
        .arg(channel)
        .arg(&keys.name)
        .invoke_async(conn)
        .await?;
    Ok(written == 1)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_and_its_lock_share_a_cluster_slot() {
        let keys = Keys::new("nexus-sidecar", "abc123");
        assert_eq!(keys.entry, "nexus-sidecar:{abc123}");
        assert_eq!(keys.lock, "nexus-sidecar:{abc123}:lock");
    }
}
