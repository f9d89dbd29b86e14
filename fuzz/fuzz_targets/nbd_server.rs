//! The NBD server's whole client path (NBD proto.md: fixed-newstyle handshake, then transmission)
//! on arbitrary client bytes, against an in-memory export that panics on any access outside it:
//! no input may panic the server, make it touch bytes outside the export, or hold more than its
//! bounded pieces (libFuzzer's RSS limit).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memsync_peer::nbd::server::{serve_client, Export, Limits};
use std::io;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIZE: usize = 1 << 20;

struct Memory(Mutex<Vec<u8>>);

impl Memory {
    fn range(&self, offset: u64, len: usize) -> std::ops::Range<usize> {
        let start = usize::try_from(offset).expect("offset fits");
        let end = start.checked_add(len).expect("no overflow");
        assert!(
            end <= SIZE,
            "access {start}..{end} past the export's {SIZE} bytes"
        );
        start..end
    }
}

impl Export for Memory {
    fn size(&self) -> u64 {
        SIZE as u64
    }
    fn read_only(&self) -> bool {
        false
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let r = self.range(offset, buf.len());
        buf.copy_from_slice(&self.0.lock().unwrap()[r]);
        Ok(())
    }
    async fn write(&self, offset: u64, data: &[u8], _fua: bool) -> io::Result<()> {
        let r = self.range(offset, data.len());
        self.0.lock().unwrap()[r].copy_from_slice(data);
        Ok(())
    }
    async fn write_zeroes(&self, offset: u64, len: u64, _fua: bool) -> io::Result<()> {
        let r = self.range(offset, usize::try_from(len).expect("len fits"));
        self.0.lock().unwrap()[r].fill(0);
        Ok(())
    }
    async fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, server) = tokio::io::duplex(64 << 10);
        let (sr, sw) = tokio::io::split(server);
        let (mut cr, mut cw) = tokio::io::split(client);
        let export = Memory(Mutex::new(vec![0; SIZE]));
        let limits = Limits {
            handshake_timeout: Duration::from_secs(5),
            ..Limits::default()
        };
        let serve = serve_client(sr, sw, "x", &export, &limits);
        let feed = async move {
            let _ = cw.write_all(data).await;
            let _ = cw.shutdown().await;
        };
        let drain = async move {
            let mut sink = Vec::new();
            let _ = cr.read_to_end(&mut sink).await;
        };
        let (_, _, _) = tokio::join!(serve, feed, drain);
    });
});
