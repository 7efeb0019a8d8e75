#!/usr/bin/env python3
"""Compares two trees entry by entry: type, mode, owner, mtime in nanoseconds, size, content,
device numbers, symlink targets, xattrs, hardlink groups and sparse holes. Prints each
difference and exits 1 when there is one. Uses dir_fd walking so paths beyond PATH_MAX work."""
import hashlib, os, stat, sys

def walk(root):
    out = {}
    inodes = {}
    def rec(dfd, rel):
        for name in sorted(os.fsencode(n) for n in os.listdir(dfd)):
            path = rel + b"/" + name if rel else name
            st = os.lstat(name, dir_fd=dfd)
            info = {
                "fmt": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid, "gid": st.st_gid, "mtime_ns": st.st_mtime_ns,
            }
            fd = None
            if stat.S_ISLNK(st.st_mode):
                info["target"] = os.readlink(name, dir_fd=dfd)
            elif stat.S_ISREG(st.st_mode):
                info["size"] = st.st_size
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
                h = hashlib.sha256()
                while True:
                    b = os.read(fd, 1 << 20)
                    if not b:
                        break
                    h.update(b)
                info["sha"] = h.hexdigest()
                # Sparse files must stay sparse: allocated blocks well below the size.
                info["sparse"] = st.st_blocks * 512 < st.st_size // 2
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                info["rdev"] = st.st_rdev
            p = b"/proc/self/fd/%d/" % dfd + name
            info["xattrs"] = sorted((k, os.getxattr(p, k, follow_symlinks=False)) for k in os.listxattr(p, follow_symlinks=False))
            if fd is not None:
                os.close(fd)
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                inodes.setdefault(st.st_ino, []).append(path)
            out[path] = info
            if stat.S_ISDIR(st.st_mode):
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
                try:
                    rec(sub, path)
                finally:
                    os.close(sub)
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    st = os.fstat(top)
    p = "/proc/self/fd/%d" % top
    out[b""] = {"xattrs": sorted((k, os.getxattr(p, k)) for k in os.listxattr(p)), "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid, "mtime_ns": st.st_mtime_ns}
    rec(top, b"")
    os.close(top)
    groups = sorted(sorted(g) for g in inodes.values())
    return out, groups

a, ga = walk(sys.argv[1].encode())
b, gb = walk(sys.argv[2].encode())
bad = 0
for p in sorted(set(a) | set(b)):
    if p not in a or p not in b:
        print("only in %s: %r" % ("first" if p in a else "second", p)); bad += 1
    elif a[p] != b[p]:
        print("differs: %r\n  %r\n  %r" % (p, a[p], b[p])); bad += 1
if ga != gb:
    print("hardlink groups differ:\n  %r\n  %r" % (ga, gb)); bad += 1
print("%d entries compared, %d differences" % (len(a), bad))
sys.exit(1 if bad else 0)
