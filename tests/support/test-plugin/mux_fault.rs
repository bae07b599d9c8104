//! `mux-fault` mode: a man-in-the-middle at the yamux level between the host and this plugin's
//! real (multiplexed) server, which misbehaves on cue. The host connects to the middle's socket
//! (announced instead of the server's); frames are relayed whole both ways, and when a data
//! frame from the host carries the bytes `inject-fault` (a Put of that key, in plaintext), the
//! fault named by `TEST_PLUGIN_MUX_FAULT` is sent to the host before that frame goes on:
//!
//! * `window-overrun`: data on stream 1 past its receive window;
//! * `reused-id`: a SYN for stream 1, which the host opened and still uses;
//! * `go-away`: go-away (normal) in the middle of the call, which is then answered;
//! * `go-away-error`: go-away with the protocol-error code in the middle of the call;
//! * `ping-flood`: one million pings (the host's acknowledgements are read and dropped);
//! * `bad-version` / `bad-type`: a frame header of yamux version 1 / of type 9;
//! * `huge-length`: a data frame header whose length field says 4 GiB;
//! * `no-new-streams` (no cue needed): streams the host opens after the first are never
//!   passed on nor acknowledged.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

const HEADER: usize = 12;
const TYPE_DATA: u8 = 0;
const TYPE_WINDOW_UPDATE: u8 = 1;
const TYPE_PING: u8 = 2;
const TYPE_GO_AWAY: u8 = 3;
const SYN: u16 = 1;
const CUE: &[u8] = b"inject-fault";

fn header(kind: u8, flags: u16, stream: u32, length: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[1] = kind;
    h[2..4].copy_from_slice(&flags.to_be_bytes());
    h[4..8].copy_from_slice(&stream.to_be_bytes());
    h[8..12].copy_from_slice(&length.to_be_bytes());
    h
}

/// One whole frame from `from` (its header and, for data, its payload), or None at its end.
fn read_frame(from: &mut UnixStream) -> Option<(Vec<u8>, u8, u16, u32)> {
    let mut h = [0u8; HEADER];
    from.read_exact(&mut h).ok()?;
    let kind = h[1];
    let flags = u16::from_be_bytes([h[2], h[3]]);
    let stream = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let length = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
    let mut frame = h.to_vec();
    if kind == TYPE_DATA {
        let start = frame.len();
        frame.resize(start + length as usize, 0);
        from.read_exact(&mut frame[start..]).ok()?;
    }
    Some((frame, kind, flags, stream))
}

/// Rewrites the handshake line to announce the middle's socket, and starts the middle.
pub fn intercept(line: String) -> String {
    let fault = std::env::var("TEST_PLUGIN_MUX_FAULT").expect("TEST_PLUGIN_MUX_FAULT");
    let mut fields: Vec<String> = line.trim_end().split('|').map(str::to_owned).collect();
    let server = fields[3].clone();
    let middle = format!("{server}-middle");
    let listener = UnixListener::bind(&middle).expect("binding the middle's socket");
    fields[3] = middle;
    std::thread::spawn(move || {
        let (host, _) = listener.accept().expect("the host's connection");
        drop(listener);
        let plugin = UnixStream::connect(&server).expect("the real server");
        run(&fault, host, plugin);
    });
    fields.join("|") + "\n"
}

fn run(fault: &str, host: UnixStream, plugin: UnixStream) {
    let to_host = Arc::new(Mutex::new(host.try_clone().unwrap()));
    // Server to host: whole frames, under the lock the injections take too.
    {
        let to_host = to_host.clone();
        let mut from_plugin = plugin.try_clone().unwrap();
        std::thread::spawn(move || {
            while let Some((frame, ..)) = read_frame(&mut from_plugin) {
                if to_host.lock().unwrap().write_all(&frame).is_err() {
                    break;
                }
            }
            let _ = to_host.lock().unwrap().shutdown(std::net::Shutdown::Write);
        });
    }
    // Host to server, watching for the cue.
    let mut from_host = host;
    let mut to_plugin = plugin;
    let mut streams_seen = 0;
    while let Some((frame, kind, flags, stream)) = read_frame(&mut from_host) {
        if fault == "no-new-streams" {
            if flags & SYN != 0 {
                streams_seen += 1;
            }
            if stream != 1 && stream != 0 && streams_seen > 1 {
                continue;
            }
        }
        if kind == TYPE_DATA && frame[HEADER..].windows(CUE.len()).any(|w| w == CUE) {
            inject(fault, &to_host);
        }
        if to_plugin.write_all(&frame).is_err() {
            break;
        }
    }
    let _ = to_plugin.shutdown(std::net::Shutdown::Write);
}

fn inject(fault: &str, to_host: &Arc<Mutex<UnixStream>>) {
    let frames: Vec<u8> = match fault {
        "window-overrun" => {
            // 256 KiB is a whole window; the server has used some of it already.
            let mut f = header(TYPE_DATA, 0, 1, 256 * 1024).to_vec();
            f.resize(HEADER + 256 * 1024, 0);
            f.extend_from_slice(&header(TYPE_DATA, 0, 1, 1));
            f.push(0);
            f
        }
        "reused-id" => header(TYPE_WINDOW_UPDATE, SYN, 1, 0).to_vec(),
        "go-away" => header(TYPE_GO_AWAY, 0, 0, 0).to_vec(),
        "go-away-error" => header(TYPE_GO_AWAY, 0, 0, 1).to_vec(),
        "bad-version" => {
            let mut h = header(TYPE_PING, SYN, 0, 7);
            h[0] = 1;
            h.to_vec()
        }
        "bad-type" => header(9, 0, 0, 0).to_vec(),
        "huge-length" => header(TYPE_DATA, 0, 1, u32::MAX).to_vec(),
        "ping-flood" => {
            // From a thread of its own, so that the host's answers keep being read meanwhile
            // (and passed on to the server, which ignores them), and the call goes on.
            let to_host = to_host.clone();
            std::thread::spawn(move || {
                let mut batch = Vec::with_capacity(HEADER * 1000);
                for i in 0..1_000_000u32 {
                    batch.extend_from_slice(&header(TYPE_PING, SYN, 0, i));
                    if batch.len() == HEADER * 1000 {
                        if to_host.lock().unwrap().write_all(&batch).is_err() {
                            return;
                        }
                        batch.clear();
                    }
                }
            });
            return;
        }
        _ => return,
    };
    let _ = to_host.lock().unwrap().write_all(&frames);
}
