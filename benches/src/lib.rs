//! Shared helpers for memsync's benchmarks: timing, reporting and the raw-QUIC baseline.

use anyhow::{Context, Result};
use bytes::Bytes;
use memsync_peer::net::identity::{Identity, TrustSet};
use memsync_peer::net::transport::PeerEndpoint;
use rand::RngCore;
use std::time::{Duration, Instant};

/// Runs `f` `runs` times and returns the fastest wall time.
pub fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = None;
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let v = f();
        let d = t.elapsed();
        best = Some(best.map_or(d, |b: Duration| b.min(d)));
        last = Some(v);
    }
    (best.expect("runs > 0"), last.expect("runs > 0"))
}

/// Bytes per second as GB/s (10^9).
pub fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Cores this process may run on, for the figures' headings.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Bytes per second as MiB/s.
pub fn mibps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / (1 << 20) as f64
}

/// The baseline for every transfer figure: `size` bytes over one QUIC stream between two of our
/// endpoints on loopback (same TLS and transport settings), written in 1 MiB blocks and
/// discarded by the receiver. Returns the wall time and the process CPU time it took.
pub async fn raw_quinn(size: u64, a: &Identity, b: &Identity) -> Result<(Duration, Duration)> {
    raw_quinn_into(size, a, b, None).await
}

/// [`raw_quinn`], the receiver writing what it receives into a new file `into` instead of
/// discarding it, 1 MiB per pwrite(2) (as a replica lands a run of chunks): the floor of any
/// transfer that keeps a copy in a file there.
pub async fn raw_quinn_into(
    size: u64,
    a: &Identity,
    b: &Identity,
    into: Option<&std::path::Path>,
) -> Result<(Duration, Duration)> {
    use std::os::unix::fs::FileExt;
    let file = into.map(std::fs::File::create_new).transpose()?;
    let server = PeerEndpoint::loopback(b, a.fingerprint())?;
    let addr = server.local_addr();
    let sink = tokio::spawn(async move {
        let incoming = server.endpoint.accept().await.context("no connection")?;
        let session = PeerEndpoint::accept(incoming).await?;
        let (mut send, mut recv) = session.conn.accept_bi().await?;
        let (mut n, mut held) = (0u64, Vec::with_capacity(1 << 20));
        while let Some(c) = recv.read_chunk(usize::MAX, true).await? {
            if let Some(f) = &file {
                held.extend_from_slice(&c.bytes);
                if held.len() >= 1 << 20 {
                    f.write_all_at(&held, n + c.bytes.len() as u64 - held.len() as u64)?;
                    held.clear();
                }
            }
            n += c.bytes.len() as u64;
        }
        if let Some(f) = &file {
            f.write_all_at(&held, n - held.len() as u64)?;
        }
        send.write_all(&[1]).await?;
        send.finish()?;
        let _ = send.stopped().await;
        anyhow::Ok(n)
    });
    let client = PeerEndpoint::client_for(addr, a, TrustSet::new([b.fingerprint()]))?;
    let session = client.connect(addr).await?;
    let mut block = vec![0u8; 1 << 20];
    rand::rng().fill_bytes(&mut block);
    let block = Bytes::from(block);
    let (t, cpu) = (Instant::now(), cpu_time());
    let (mut send, mut recv) = session.conn.open_bi().await?;
    for _ in 0..size >> 20 {
        send.write_chunk(block.clone()).await?;
    }
    send.finish()?;
    let mut done = [0u8; 1];
    recv.read_exact(&mut done).await?;
    let (d, c) = (t.elapsed(), cpu_time() - cpu);
    anyhow::ensure!(sink.await?? == size, "raw transfer lost bytes");
    Ok((d, c))
}

/// CPU time used by this process so far, all threads (CLOCK_PROCESS_CPUTIME_ID).
pub fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The baseline for first-touch latencies: request/response round trips over raw QUIC between
/// two of our endpoints on loopback. Each of `samples` requests (8 bytes on one stream) is
/// answered with `reply` bytes on a stream of higher send priority, as an urgent fetch is;
/// with `busy`, the server meanwhile pushes bulk data on a third stream as fast as QUIC lets it
/// (the background pull's analogue). Requests are made from the calling thread (not a runtime
/// worker), as a faulting thread waits; `rt` runs both endpoints. Returns the sorted latencies.
pub fn raw_quinn_round_trips(
    rt: &tokio::runtime::Runtime,
    a: &Identity,
    b: &Identity,
    samples: usize,
    reply: usize,
    busy: bool,
) -> Result<Vec<Duration>> {
    let (session, server) = rt.block_on(async {
        let server = PeerEndpoint::loopback(b, a.fingerprint())?;
        let addr = server.local_addr();
        let server = tokio::spawn(async move {
            let incoming = server.endpoint.accept().await.context("no connection")?;
            let session = PeerEndpoint::accept(incoming).await?;
            let (mut reply_send, mut requests) = session.conn.accept_bi().await?;
            reply_send.set_priority(1)?;
            if busy {
                let conn = session.conn.clone();
                tokio::spawn(async move {
                    let mut bulk = conn.open_uni().await?;
                    let block = Bytes::from(vec![7u8; 1 << 20]);
                    loop {
                        bulk.write_chunk(block.clone()).await?;
                    }
                    #[allow(unreachable_code)]
                    anyhow::Ok(())
                });
            }
            let answer = Bytes::from(vec![9u8; reply]);
            let mut req = [0u8; 8];
            while requests.read_exact(&mut req).await.is_ok() {
                reply_send.write_chunk(answer.clone()).await?;
            }
            anyhow::Ok(())
        });
        let client = PeerEndpoint::client_for(addr, a, TrustSet::new([b.fingerprint()]))?;
        let session = client.connect(addr).await?;
        if busy {
            let conn = session.conn.clone();
            tokio::spawn(async move {
                let mut bulk = conn.accept_uni().await?;
                while bulk.read_chunk(usize::MAX, false).await?.is_some() {}
                anyhow::Ok(())
            });
        }
        anyhow::Ok((session, server))
    })?;
    let (mut send, mut recv) = rt.block_on(session.conn.open_bi())?;
    let mut buf = vec![0u8; reply];
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        std::thread::sleep(Duration::from_micros(200));
        let t = Instant::now();
        rt.block_on(async {
            send.write_all(&[0; 8]).await?;
            recv.read_exact(&mut buf).await?;
            anyhow::Ok(())
        })?;
        out.push(t.elapsed());
    }
    session.conn.close(0u32.into(), b"done");
    server.abort();
    out.sort();
    Ok(out)
}

/// Runs a bench's async body on a multi-threaded tokio runtime: the benches' `main`.
pub fn block_on(body: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(body)
}
