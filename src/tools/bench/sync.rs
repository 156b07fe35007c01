//! `beacon bench sync`: what one durable write costs on the disk a store is
//! on, by the ways a write-ahead log could make it durable. The store's
//! commit today waits for three device flushes in series; a log of our own
//! needs one. This measures the candidates side by side, in one run:
//!
//! - `pwrite + fdatasync`, into a file preallocated with zeros (and synced),
//!   so the flush carries no metadata: what a preallocated WAL segment costs;
//! - the same, appending to a growing file (each flush also writes the new
//!   size): what a log without preallocation costs;
//! - `O_DSYNC`: every write durable by itself;
//! - `pwritev2(RWF_DSYNC)`: a durable write without the open flag;
//! - `pwrite + fsync` (data and metadata);
//! - three `pwrite + fdatasync` in series into three files: the shape of
//!   today's commit.
//!
//! Figures are per operation: rate, p50 and p99 latency. Run it on the
//! filesystem the store will use (`--dir`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::BenchError;

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Io(e.to_string())
}

/// One method's figures.
#[derive(Debug, Clone)]
pub struct SyncFigures {
    pub method: &'static str,
    pub ops: usize,
    pub per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// A file of `len` zero bytes, written and synced (its blocks allocated and
/// its size durable), for overwrites that need no metadata.
fn zeroed(path: &Path, len: u64) -> Result<File, BenchError> {
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .map_err(err)?;
    let chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).map_err(err)?;
        left -= n as u64;
    }
    f.sync_all().map_err(err)?;
    crate::base::disk::sync_parent(path).map_err(err)?;
    Ok(f)
}

fn figures(method: &'static str, mut lat: Vec<Duration>, total: Duration) -> SyncFigures {
    lat.sort();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1e6)
            .unwrap_or(0.0)
    };
    SyncFigures {
        method,
        ops: lat.len(),
        per_sec: lat.len() as f64 / total.as_secs_f64().max(1e-9),
        p50_us: q(0.5),
        p99_us: q(0.99),
    }
}

/// Times `count` operations of `op(i)`.
fn time(
    method: &'static str,
    count: usize,
    mut op: impl FnMut(usize) -> Result<(), BenchError>,
) -> Result<SyncFigures, BenchError> {
    let mut lat = Vec::with_capacity(count);
    let start = Instant::now();
    for i in 0..count {
        let t = Instant::now();
        op(i)?;
        lat.push(t.elapsed());
    }
    Ok(figures(method, lat, start.elapsed()))
}

/// Runs every method with `count` writes of `size` bytes in `dir` (a
/// scratch directory is made in it, and removed).
pub fn run(dir: &Path, count: usize, size: usize) -> Result<Vec<SyncFigures>, BenchError> {
    let scratch: PathBuf = dir.join(format!(".beacon-bench-sync-{}", std::process::id()));
    crate::base::disk::create_dir_all(&scratch).map_err(err)?;
    let result = run_in(&scratch, count, size);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn run_in(dir: &Path, count: usize, size: usize) -> Result<Vec<SyncFigures>, BenchError> {
    let len = (count * size) as u64;
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut out = Vec::new();

    let f = zeroed(&dir.join("prealloc-fdatasync"), len)?;
    out.push(time("pwrite + fdatasync, preallocated", count, |i| {
        f.write_all_at(&data, (i * size) as u64).map_err(err)?;
        rustix::fs::fdatasync(&f).map_err(err)
    })?);

    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dir.join("append-fdatasync"))
        .map_err(err)?;
    out.push(time("pwrite + fdatasync, appending", count, |i| {
        f.write_all_at(&data, (i * size) as u64).map_err(err)?;
        rustix::fs::fdatasync(&f).map_err(err)
    })?);

    drop(zeroed(&dir.join("prealloc-odsync"), len)?);
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DSYNC.bits() as i32)
        .open(dir.join("prealloc-odsync"))
        .map_err(err)?;
    out.push(time("O_DSYNC write, preallocated", count, |i| {
        f.write_all_at(&data, (i * size) as u64).map_err(err)
    })?);

    let f = zeroed(&dir.join("prealloc-rwf"), len)?;
    out.push(time("pwritev2(RWF_DSYNC), preallocated", count, |i| {
        let mut at = (i * size) as u64;
        let mut rest: &[u8] = &data;
        while !rest.is_empty() {
            let n = rustix::io::pwritev2(
                &f,
                &[std::io::IoSlice::new(rest)],
                at,
                rustix::io::ReadWriteFlags::DSYNC,
            )
            .map_err(err)?;
            rest = &rest[n..];
            at += n as u64;
        }
        Ok(())
    })?);

    let f = zeroed(&dir.join("prealloc-fsync"), len)?;
    out.push(time("pwrite + fsync, preallocated", count, |i| {
        f.write_all_at(&data, (i * size) as u64).map_err(err)?;
        f.sync_all().map_err(err)
    })?);

    let files = [
        zeroed(&dir.join("three-a"), len)?,
        OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(dir.join("three-b"))
            .map_err(err)?,
        zeroed(&dir.join("three-c"), (count * 16) as u64)?,
    ];
    out.push(time(
        "three in series (today's commit shape)",
        count,
        |i| {
            files[0]
                .write_all_at(&data, (i * size) as u64)
                .map_err(err)?;
            rustix::fs::fdatasync(&files[0]).map_err(err)?;
            files[1]
                .write_all_at(&data, (i * size) as u64)
                .map_err(err)?;
            rustix::fs::fdatasync(&files[1]).map_err(err)?;
            files[2]
                .write_all_at(&(i as u64).to_be_bytes(), (i * 16) as u64)
                .map_err(err)?;
            rustix::fs::fdatasync(&files[2]).map_err(err)
        },
    )?);
    Ok(out)
}

/// The figures as a Markdown table.
pub fn print(rows: &[SyncFigures], size: usize) {
    println!("| durable write of {size} B | ops/s | p50 µs | p99 µs |");
    println!("|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} |",
            r.method, r.per_sec, r.p50_us, r.p99_us
        );
    }
}
