#!/usr/bin/env python3
"""Records real traffic for the fuzz seed corpora: run as a plugin by a host, it starts the real
plugin given in RECORD_PLUGIN (a go-plugin binary, say), announces a socket of its own, relays
the host's connection to the plugin's socket and writes what each side sent, plus the plugin's
handshake line and stderr, under RECORD_DIR:

    RECORD_DIR=/tmp/rec RECORD_PLUGIN=target/interop/go-kv-plugin \
      cargo run -q -p rpcplugin-cli -- call --multiplex --cookie KV_PLUGIN=rpcplugin-kv \
      fuzz/seeds/record.py rpcplugin.example.KV/Get --data '{"key":"k"}'

(see fuzz/seeds/make.sh, which turns the recordings into seed files)."""
import os, socket, subprocess, sys, threading

out = os.environ["RECORD_DIR"]
os.makedirs(out, exist_ok=True)
child = subprocess.Popen([os.environ["RECORD_PLUGIN"]], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
line = child.stdout.readline().decode()
open(os.path.join(out, "handshake"), "w").write(line)
fields = line.strip().split("|")
proxy = fields[3] + "-recorded"
listener = socket.socket(socket.AF_UNIX)
listener.bind(proxy)
listener.listen(1)
fields[3] = proxy
sys.stdout.write("|".join(fields) + "\n")
sys.stdout.flush()

def stderr_copy():
    with open(os.path.join(out, "stderr"), "wb") as f:
        for chunk in iter(lambda: child.stderr.read1(65536), b""):
            f.write(chunk)
            f.flush()
threading.Thread(target=stderr_copy, daemon=True).start()

host, _ = listener.accept()
plugin = socket.socket(socket.AF_UNIX)
plugin.connect(fields[3].removesuffix("-recorded"))

def relay(src, dst, name):
    with open(os.path.join(out, name), "wb") as f:
        while True:
            data = src.recv(65536)
            if not data:
                break
            f.write(data)
            f.flush()
            dst.sendall(data)
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass

t = threading.Thread(target=relay, args=(plugin, host, "plugin-to-host"), daemon=True)
t.start()
relay(host, plugin, "host-to-plugin")
t.join(10)
child.kill()
child.wait()
