//! The conventional `process_*` metrics, read from `/proc/self` at scrape time (Linux only;
//! elsewhere the parent module registers no collector and they are absent).
//!
//! Names, units and meanings follow the Prometheus client libraries. A file that cannot be read
//! or parsed leaves its metrics out of that scrape rather than failing it.

use std::fmt;
use std::io::Read;
use std::sync::OnceLock;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Clock ticks per second in `/proc/<pid>/stat`: the kernel's `USER_HZ`, which is 100 on every
/// architecture Rust targets (only Alpha and the removed IA-64 differed). Asking `sysconf` would
/// take `libc` and `unsafe`, which this crate forbids, for a constant.
const USER_HZ: f64 = 100.0;

/// Reads `/proc/self` on each scrape.
#[derive(Debug, Default)]
pub(super) struct ProcessCollector {
    /// The start time never changes: read `/proc/stat` once.
    start_time: OnceLock<Option<f64>>,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let (seconds, bytes) = (Unit::Seconds, Unit::Bytes);
        // One buffer for every file of the scrape.
        let mut buf = String::with_capacity(2048);

        let stat = read("/proc/self/stat", &mut buf).and_then(parse_stat);
        if let Some(stat) = stat {
            let cpu = (stat.utime + stat.stime) as f64 / USER_HZ;
            let counter = ConstCounter::new(cpu);
            counter.encode(encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds.",
                Some(&seconds),
                counter.metric_type(),
            )?)?;
        }
        if let Some(status) = read("/proc/self/status", &mut buf) {
            for (key, name, help) in [
                (
                    "VmRSS:",
                    "process_resident_memory",
                    "Resident memory size in bytes.",
                ),
                (
                    "VmSize:",
                    "process_virtual_memory",
                    "Virtual memory size in bytes.",
                ),
            ] {
                if let Some(kib) = status_kib(status, key) {
                    gauge(&mut encoder, name, help, Some(&bytes), kib * 1024)?;
                }
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            // Counts the descriptor reading the directory too, as the other clients do.
            let open = fds.count() as u64;
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                open,
            )?;
        }
        if let Some(max) = read("/proc/self/limits", &mut buf).and_then(max_open_files) {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                max,
            )?;
        }
        let start = *self.start_time.get_or_init(|| {
            let boot = read("/proc/stat", &mut buf).and_then(boot_time)?;
            Some(boot as f64 + stat?.start_ticks as f64 / USER_HZ)
        });
        if let Some(start) = start {
            gauge(
                &mut encoder,
                "process_start_time",
                "Start time of the process since unix epoch in seconds.",
                Some(&seconds),
                start,
            )?;
        }
        Ok(())
    }
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: N,
) -> Result<(), fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, unit, gauge.metric_type())?)
}

/// The whole of a (small, `/proc`) file, in `buf`.
fn read<'b>(path: &str, buf: &'b mut String) -> Option<&'b str> {
    buf.clear();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(buf))
        .ok()?;
    Some(buf)
}

/// What is taken from `/proc/self/stat`: CPU ticks, and start ticks after boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    start_ticks: u64,
}

/// proc(5): `pid (comm) state ppid …`; `comm` may hold spaces and parentheses, so fields are
/// counted from the last `)`. utime, stime and starttime are fields 14, 15 and 22.
fn parse_stat(stat: &str) -> Option<Stat> {
    let after_comm = stat.get(stat.rfind(')')? + 1..)?;
    // The first field here is field 3 (state).
    let mut fields = after_comm.split_ascii_whitespace();
    let utime = fields.nth(14 - 3)?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    let start_ticks = fields.nth(22 - 16)?.parse().ok()?;
    Some(Stat {
        utime,
        stime,
        start_ticks,
    })
}

/// A `Key:   123 kB` line of `/proc/self/status`, in KiB.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix(key))?;
    line.split_ascii_whitespace().next()?.parse().ok()
}

/// The soft limit in the `Max open files  soft  hard  files` line of `/proc/self/limits`;
/// `None` when unlimited.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_ascii_whitespace().next()?.parse().ok()
}

/// `btime` of `/proc/stat`: boot time, seconds since the epoch.
fn boot_time(stat: &str) -> Option<u64> {
    let line = stat.lines().find_map(|l| l.strip_prefix("btime "))?;
    line.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 9 0 123456 1048576 512 18446744073709551615 1 1 0 0";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                utime: 250,
                stime: 75,
                start_ticks: 123456
            })
        );
        assert_eq!(parse_stat("4242 (truncated) S 1"), None);

        let status = "Name:\tnexus-sidecar\nVmPeak:\t  20000 kB\nVmSize:\t   19000 kB\n\
                      VmRSS:\t    7000 kB\nThreads:\t9\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(7000));
        assert_eq!(status_kib(status, "VmSize:"), Some(19000));
        assert_eq!(status_kib(status, "VmSwap:"), None);

        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63451                63451                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(
            max_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );

        assert_eq!(
            boot_time("cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
    }
}
