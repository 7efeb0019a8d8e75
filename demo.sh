#!/usr/bin/env bash
# The main job end to end on the embedded default: a SQLite-backed repository in a local
# folder (./demo/repo). Builds aurum, makes a sample golden client, captures it, lists it,
# patches the golden client and captures again, compares, tags, makes a node root at the old
# revision, updates it through `aurum serve` on 127.0.0.1, rolls it back with the server
# stopped, and verifies the repository. Safe to rerun: it starts from scratch.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --locked --quiet
aurum() { echo "+ aurum $*" >&2; ./target/release/aurum --repo demo/repo "$@"; }

rm -rf demo && mkdir -p demo
gold=demo/golden
echo "== a sample golden client in $gold"
mkdir -p $gold/{etc/ssh,usr/bin,usr/lib,var/log,proc,sys,dev,tmp,home/alice}
printf 'compute node\n' > $gold/etc/motd
printf 'root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n' > $gold/etc/passwd
printf '0123456789abcdef\n' > $gold/etc/machine-id
printf 'PRIVATE KEY\n' > $gold/etc/ssh/ssh_host_ed25519_key
for b in ls cp mv tar gzip; do cp "$(command -v $b)" $gold/usr/bin/ 2>/dev/null || true; done
cp -a /usr/lib/x86_64-linux-gnu/libc.so.6 $gold/usr/lib/ 2>/dev/null || head -c 2000000 /dev/urandom > $gold/usr/lib/libc.so.6
ln -s ls $gold/usr/bin/dir
ln $gold/etc/motd $gold/etc/issue
printf 'boot log\n' > $gold/var/log/boot.log
chmod 4755 $gold/usr/bin/tar

aurum init
aurum getimage --golden-client $gold --image compute -m "initial build"
aurum lsimage
aurum ls compute /etc

echo "== patch the golden client, capture again: only the change is stored"
printf 'compute node, patched\n' > $gold/etc/motd
printf 'new tool\n' > $gold/usr/bin/newtool
aurum getimage --golden-client $gold --image compute -m "security patch"
aurum log compute
aurum diff compute@1 compute@2

echo "== a node at compute@1, updated to compute@2 through aurum serve on loopback, then rolled back"
aurum tag compute@1 last-known-good
aurum tag compute@2 production
aurum checkout compute@1 demo/node
aurum updateclient --root demo/node --image compute@1 --no-default-excludes   # adopt: record what it runs
./target/release/aurum --repo demo/repo serve --listen 127.0.0.1:18035 2>demo/serve.log &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/18035) 2>/dev/null && break; sleep 0.1; done
aurum updateclient --server http://127.0.0.1:18035 --image compute:production --root demo/node --dry-run
aurum updateclient --server http://127.0.0.1:18035 --image compute:production --root demo/node
cat demo/node/etc/motd
aurum nodes
kill $server; wait $server 2>/dev/null || true
echo "== the server is stopped; roll back from the node's own undo area"
aurum rollback --root demo/node
cat demo/node/etc/motd
aurum node-status --root demo/node
aurum verify
aurum lsimage --json
echo "demo done: repository in demo/repo, node root in demo/node"
