#!/usr/bin/env python3
"""Random file operations through a clawfs mount, checked against the history.

    random_ops.py ROOT SEED[,SEED...] OPS EVERY -- CLAWFS...

For each seed, makes ROOT/sSEED and applies OPS operations chosen from the seed (writes at
offsets, appends, truncations, fallocate modes, mmap writes, copy_file_range, two descriptors
on one file, temp-and-rename saves, writes to an unlinked open file, renames of files and
directories (plain, RENAME_EXCHANGE, RENAME_NOREPLACE), hard links, symlinks, chmod, utimes,
user. attributes, descriptors kept open across other operations), many of which fail, as
they would for an agent. Every EVERY operations it notes the tree (type, mode, content hash,
size, user. attributes) and names the moment with `clawfs mark`. Then it restores each mark
with `clawfs restore --at` and compares: prints every difference, exits 1 if there is one.

Odd seeds use no names that are not versioned (`*.lock`), even seeds do.

    --offline    the second half of each seed runs unmounted: marks made then capture what
                 changed, and the next mount the rest.
    --rollbacks  after four marks in ten, the seed's tree is rolled back, live, to an earlier
                 mark (over the descriptors it keeps open: --force), and must then equal it
                 (but for directories kept because they hold files that are not versioned);
                 the rollback's moment is marked too.
    --crash      the daemon is killed (`kill -9`) after a third and two thirds of the
                 operations, and mounted again at once: every mark restores all the same.
    --threads N  N writers at once between two marks, each with operations of its own, on the
                 same names.
    --prune-live every moment but the marks is pruned during half the rounds, while their
                 operations run.
    --prune      at the end, every moment but the marks is pruned (from the remote too, with
                 --clone), and every mark must restore as before.
    --browse     at the end, every mark is checked again through `clawfs browse`'s view.
    --clone      at the end, everything is pushed (`clawfs push --wait`) to the remote
                 $CLAWFS_RANDOM_REMOTE names (a URL and its options, e.g. `--endpoint`), and
                 cloned onto a new machine: its tree must be the tree now, and every mark must
                 restore from its store as it did from this one's."""
import ctypes
import hashlib
import json
import mmap
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
AT_FDCWD = -100
DIRS = ["", "d", "d/e", "g", "q.lock"]
NAMES = ["a", "b", "c.md", "x.json", "z.lock"]


def unversioned(rel):
    return any(part.endswith(".lock") for part in rel.split("/"))


def gen(seed, n):
    rng = random.Random(seed)
    unv = seed % 2 == 0  # names that are not versioned, and files crossing from and to them
    dirs = [d for d in DIRS if unv or not unversioned(d)]
    names = [m for m in NAMES if unv or not unversioned(m)]

    def p():
        return os.path.join(rng.choice(dirs), rng.choice(names))

    def vp():  # a versioned name: a descriptor kept open on it is not passed through
        return os.path.join(rng.choice([d for d in dirs if not unversioned(d)]),
                            rng.choice([m for m in names if not unversioned(m)]))

    def dr():
        return rng.choice(dirs[1:])

    def sz():
        return rng.choice([0, 1, 100, 4095, 4096, 4097, 20000, 70000, 200000])

    def dat():
        return [rng.randrange(1 << 30), rng.random() < 0.3]

    ops = []
    for _ in range(n):
        k = rng.randrange(26)
        if k == 0: o = ["pwrite", p(), sz() or 10, rng.choice([0, 10, 4096, 5000, 65536, 100000]), dat()]
        elif k == 1: o = ["append", p(), rng.choice([1, 50, 5000]), dat()]
        elif k == 2: o = ["truncate", p(), sz()]
        elif k == 3: o = ["rewrite", p(), sz(), dat()]
        elif k == 4: o = ["fallocate", p(), rng.choice([3, 0x10, 0, 1]), rng.choice([0, 100, 4096, 8192]),
                          rng.choice([1, 4096, 10000, 300000])]
        elif k == 5: o = ["rename", p(), p()]
        elif k == 6: o = ["exchange", p(), p()]
        elif k == 7: o = ["noreplace", p(), p()]
        elif k == 8: o = ["link", p(), p()]
        elif k == 9: o = ["unlink", p()]
        elif k == 10: o = ["mkdir", dr(), rng.choice([0o755, 0o700])] if rng.random() < 0.5 else ["rmdir", dr()]
        elif k == 11: o = ["symlink", rng.choice(["a", "../b", "/nowhere", "d/c.md"]), p()]
        elif k == 12: o = ["chmod", p(), rng.choice([0o600, 0o644, 0o755, 0o400])]
        elif k == 13: o = ["mmap", p(), rng.random(), rng.choice([1, 100, 5000]), dat(), rng.random() < 0.7]
        elif k == 14: o = ["copy", p(), p(), rng.choice([10, 5000, 100000]), rng.choice([0, 3]), rng.choice([0, 4096])]
        elif k == 15: o = ["twofds", p(), dat(), rng.random() < 0.5]
        elif k == 16: o = ["tmprename", p(), sz(), dat()]
        elif k == 17: o = ["unlinkopen", p(), dat()]
        elif k == 18: o = ["renamedir", dr(), (dr() + "2") if rng.random() < 0.3 else dr()]
        elif k == 19: o = ["ftrunc_write", p(), sz(), rng.choice([0, 50000]), dat(), rng.random() < 0.5]
        elif k == 20: o = ["keep", rng.randrange(3), vp()]
        elif k in (21, 22): o = ["write_kept", rng.randrange(3), rng.choice([0, 100, 4096, 70000]),
                                 rng.choice([1, 100, 5000]), dat()]
        elif k == 23: o = ["close_kept", rng.randrange(3), rng.random() < 0.3]
        elif k == 24: o = ["xattr", p(), rng.choice(["user.a", "user.b"]), dat(), rng.random() < 0.2]
        else: o = ["utime", p(), rng.randrange(1 << 31)]
        ops.append(o)
    return ops


def data(d, n):
    r = random.Random(d[0])
    if d[1]:
        return r.randbytes(n)
    return (("line %d " % r.randint(0, 99)) * (n // 6 + 1)).encode()[:n]


def run(root, o, kept):
    f = lambda q: os.path.join(root, q)
    k = o[0]
    if k == "pwrite":
        fd = os.open(f(o[1]), os.O_WRONLY | os.O_CREAT, 0o644)
        try: os.pwrite(fd, data(o[4], o[2]), o[3])
        finally: os.close(fd)
    elif k == "append":
        fd = os.open(f(o[1]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try: os.write(fd, data(o[3], o[2]))
        finally: os.close(fd)
    elif k == "truncate":
        os.truncate(f(o[1]), o[2])
    elif k == "rewrite":
        with open(f(o[1]), "wb") as h: h.write(data(o[3], o[2]))
    elif k == "fallocate":
        fd = os.open(f(o[1]), os.O_RDWR)
        try:
            if libc.fallocate(fd, o[2], o[3], o[4]) != 0:
                raise OSError(ctypes.get_errno(), "fallocate")
        finally: os.close(fd)
    elif k in ("rename", "renamedir"):
        os.rename(f(o[1]), f(o[2]))
    elif k in ("exchange", "noreplace"):
        if libc.renameat2(AT_FDCWD, f(o[1]).encode(), AT_FDCWD, f(o[2]).encode(), 2 if k == "exchange" else 1):
            raise OSError(ctypes.get_errno(), k)
    elif k == "link": os.link(f(o[1]), f(o[2]))
    elif k == "unlink": os.unlink(f(o[1]))
    elif k == "mkdir": os.mkdir(f(o[1]), o[2])
    elif k == "rmdir": os.rmdir(f(o[1]))
    elif k == "symlink": os.symlink(o[1], f(o[2]))
    elif k == "chmod": os.chmod(f(o[1]), o[2])
    elif k == "mmap":
        fd = os.open(f(o[1]), os.O_RDWR)
        try:
            n = os.fstat(fd).st_size
            if n:
                m = mmap.mmap(fd, n)
                at = int(o[2] * n)
                b = data(o[4], min(n - at, o[3]))
                m[at:at + len(b)] = b
                if o[5]: m.flush()
                m.close()
        finally: os.close(fd)
    elif k == "copy":
        src = os.open(f(o[1]), os.O_RDONLY)
        try:
            dst = os.open(f(o[2]), os.O_WRONLY | os.O_CREAT, 0o644)
            try: os.copy_file_range(src, dst, o[3], o[4], o[5])
            finally: os.close(dst)
        finally: os.close(src)
    elif k == "twofds":
        a = os.open(f(o[1]), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            b = os.open(f(o[1]), os.O_WRONLY)  # fails if another writer moved the name
            try:
                os.pwrite(a, data(o[2], 3000), 0)
                os.pwrite(b, data([o[2][0] + 1, o[2][1]], 2000), 1000)
                os.pwrite(a, data([o[2][0] + 2, o[2][1]], 10), 2500)
                if o[3]: os.fsync(b)
            finally:
                os.close(b)
        finally:
            os.close(a)
    elif k == "tmprename":
        t = f(o[1]) + ".tmp"
        with open(t, "wb") as h:
            h.write(data(o[3], o[2])); h.flush(); os.fsync(h.fileno())
        os.rename(t, f(o[1]))
    elif k == "unlinkopen":
        fd = os.open(f(o[1]), os.O_RDWR)
        try:
            os.unlink(f(o[1]))
            os.write(fd, data(o[2], 100))
        finally: os.close(fd)
    elif k == "ftrunc_write":
        fd = os.open(f(o[1]), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, o[2]); os.pwrite(fd, data(o[4], 100), o[3])
            if o[5]: os.fdatasync(fd)
        finally: os.close(fd)
    elif k == "keep":
        if o[1] in kept: os.close(kept.pop(o[1]))
        kept[o[1]] = os.open(f(o[2]), os.O_RDWR | os.O_CREAT, 0o644)
    elif k == "write_kept":
        if o[1] in kept: os.pwrite(kept[o[1]], data(o[4], o[3]), o[2])
    elif k == "close_kept":
        if o[1] in kept:
            fd = kept.pop(o[1])
            if o[2]: os.fsync(fd)
            os.close(fd)
    elif k == "xattr":
        if o[4]: os.removexattr(f(o[1]), o[2], follow_symlinks=False)
        else: os.setxattr(f(o[1]), o[2], data(o[3], 20), follow_symlinks=False)
    elif k == "utime":
        os.utime(f(o[1]), (o[2], o[2]), follow_symlinks=False)


def manifest(root, links):
    """Every versioned name below `root`: its kind and mode, a file's size, content hash and
    `user.` attributes, and with `links`, the names of a file with several (hard links)."""
    m, names = {}, {}
    for dp, dns, fns in os.walk(root):
        dns[:] = [d for d in dns if not unversioned(d)]
        for n in dns + fns:
            if unversioned(n):
                continue
            p = os.path.join(dp, n)
            r = os.path.relpath(p, root)
            st = os.lstat(p)
            if os.path.islink(p):
                m[r] = ["symlink", os.readlink(p)]
            elif os.path.isdir(p):
                m[r] = ["dir", oct(st.st_mode & 0o7777)]
            else:
                with open(p, "rb") as h:
                    digest = hashlib.sha256(h.read()).hexdigest()[:16]
                attrs = sorted([a, os.getxattr(p, a).hex()] for a in os.listxattr(p) if a.startswith("user."))
                m[r] = ["file", oct(st.st_mode & 0o7777), st.st_size, digest, attrs]
                names.setdefault((st.st_dev, st.st_ino), []).append(r)
    for group in names.values():
        if links and len(group) > 1:
            for r in group:
                m[r].append(sorted(group))
    return m


def compare(seed, what, want, got, err=""):
    """Prints how `got` (None: it could not be read) differs from `want`; True if it does."""
    if got == want:
        return False
    print("seed %d, %s: the history differs from the tree%s" % (seed, what, ": " + err if got is None else ""))
    for k in sorted(set(got or {}) | set(want)):
        if (got or {}).get(k) != want.get(k):
            print("   %s: tree %s, history %s" % (k, want.get(k), (got or {}).get(k)))
    return True


def restored(clawfs, name, rel, links):
    """The manifest of `rel` as `clawfs restore --at name` writes it, or (None, its error)."""
    out = tempfile.mkdtemp(prefix="clawfs-random-")
    shutil.rmtree(out)
    r = subprocess.run(clawfs + ["restore", "--at", name, out, rel], capture_output=True, text=True)
    got = manifest(os.path.join(out, rel), links) if r.returncode == 0 else None
    shutil.rmtree(out, ignore_errors=True)
    return got, r.stderr


def mounted(root):
    with open("/proc/self/mountinfo") as h:
        return any(line.split()[4] == os.path.realpath(root) for line in h)


def kill_daemon(root):
    """`kill -9` of the daemon mounted at `root`, and waits for its sentinel to detach the mount."""
    pids = subprocess.run(["pgrep", "-f", "mount --foreground %s" % os.path.realpath(root)],
                          capture_output=True, text=True).stdout.split()
    assert len(pids) == 1, pids
    os.kill(int(pids[0]), 9)
    for _ in range(1000):
        if not mounted(root):
            return
        time.sleep(0.01)
    raise SystemExit("the killed daemon's mount was not detached")


def main():
    root, seeds, nops, every = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    flags = sys.argv[:sys.argv.index("--")]
    offline, rollbacks, crash = "--offline" in flags, "--rollbacks" in flags, "--crash" in flags
    threads = int(flags[flags.index("--threads") + 1]) if "--threads" in flags else 1
    prune_live = "--prune-live" in flags
    clawfs = sys.argv[sys.argv.index("--") + 1:]
    wrong = 0
    checked = []  # (seed, its tree relative to root, links checked, its marks, its tree at the end)
    for seed in map(int, seeds.split(",")):
        tree = os.path.join(root, "s%d" % seed)
        rel = os.path.relpath(tree, root)
        os.mkdir(tree)
        # Which names are one file's is checked where the history must know: without names
        # that are not versioned (see the README's limitations).
        links = seed % 2 == 1
        kept, marks, failed = {}, [], 0
        # With --threads N, N - 1 more writers, each with operations of its own, run beside
        # this one's between two marks (on the same names: they race).
        # Their seeds have this one's parity, so they use names that are not versioned if it does.
        others = [(gen(seed * 100 + 2 * t + seed % 2, nops), {}) for t in range(1, threads)]
        running, pruning, prune_killed = [], None, False
        for i, o in enumerate(gen(seed, nops)):
            if offline and i == nops // 2:
                # The second half on the plain directory: each mark, made offline, captures
                # what changed since the last, and the next mount captures the rest.
                for fd in kept.values():
                    os.close(fd)
                kept.clear()
                for _, their_kept in others:
                    for fd in their_kept.values():
                        os.close(fd)
                    their_kept.clear()
                subprocess.run(clawfs + ["unmount", root], check=True, stdout=subprocess.DEVNULL)
            if crash and i in (nops // 3, 2 * nops // 3) and not (offline and i >= nops // 2):
                # The daemon killed between two operations, its last changes perhaps not yet
                # committed: its sentinel detaches the mount, the next mount captures them.
                # A prune under way may be killed with it ("the daemon hung up"): that is fine
                # if every mark still restores.
                prune_killed = pruning is not None
                kill_daemon(root)
                for k in [kept] + [their_kept for _, their_kept in others]:
                    for fd in k.values():
                        try:
                            os.close(fd)  # closed all the same, but its file system is gone
                        except OSError:
                            pass
                    k.clear()
                subprocess.run(clawfs + ["mount", root], check=True, stdout=subprocess.DEVNULL)
            if i % every == 0 and prune_live and random.Random(seed * 7 + i).random() < 0.5:
                # Every moment but the marks pruned while this round's writers run.
                pruning = subprocess.Popen(clawfs + ["prune", "--keep-within", "0s", "--hourly", "0s",
                                                     "--daily", "0s"], stdout=subprocess.DEVNULL)
            if i % every == 0 and others:
                def writer(ops, their_kept):
                    for op in (op for op in ops if op[0] != "mmap"):
                        try:
                            run(tree, op, their_kept)
                        except OSError:
                            pass
                running = [threading.Thread(target=writer, args=(ops[i:i + every], k)) for ops, k in others]
                for t in running:
                    t.start()
            try:
                # Not a mapping beside other writers: one truncating the file under it would
                # be SIGBUS.
                if not (others and o[0] == "mmap"):
                    run(tree, o, kept)
            except OSError:
                failed += 1
            if (i + 1) % every == 0 or i + 1 == nops:
                for t in running:
                    t.join()
                if pruning is not None:
                    if pruning.wait() and not prune_killed:
                        wrong += 1
                        print("seed %d: a prune during operation %d failed" % (seed, i))
                    pruning, prune_killed = None, False
                name = "s%d-%d" % (seed, i + 1)
                marks.append((name, manifest(tree, links)))
                subprocess.run(clawfs + ["mark", name], check=True, stdout=subprocess.DEVNULL)
                if rollbacks and len(marks) > 1 and random.Random(seed * 1000 + i).random() < 0.4:
                    # The seed's tree back to an earlier mark, live, over open descriptors.
                    back, want = random.Random(seed + i).choice(marks[:-1])
                    r = subprocess.run(clawfs + ["rollback", "--to", back, "--yes", "--force", rel],
                                       capture_output=True, text=True)
                    now = got = manifest(tree, links)
                    # A directory holding files that are not versioned is left, with them.
                    holds_unversioned = lambda d: any(unversioned(n) for _, ds, fs in os.walk(os.path.join(tree, d)) for n in ds + fs)
                    got = {k: v for k, v in got.items() if k in want or v[0] != "dir" or not holds_unversioned(k)}
                    if r.returncode or got != want:
                        wrong += 1
                        print("seed %d: rollback to %s left the tree unlike it: %s" % (seed, back, r.stderr))
                        for k in sorted(set(got) | set(want)):
                            if got.get(k) != want.get(k):
                                print("   %s: then %s, now %s" % (k, want.get(k), got.get(k)))
                    name = "s%d-%d-back" % (seed, i + 1)
                    marks.append((name, now))
                    subprocess.run(clawfs + ["mark", name], check=True, stdout=subprocess.DEVNULL)
        for k in [kept] + [their_kept for _, their_kept in others]:
            for fd in k.values():
                os.close(fd)
        if offline:
            subprocess.run(clawfs + ["mount", root], check=True, stdout=subprocess.DEVNULL)
        for name, want in marks:
            got, err = restored(clawfs, name, rel, links)
            wrong += compare(seed, "mark %s" % name, want, got, err)
        checked.append((seed, rel, links, marks, manifest(tree, links)))
        print("seed %d: %d operations (%d failed as they would natively), %d marks checked" % (seed, nops, failed, len(marks)))
    if "--prune" in flags:
        # Every moment but the marks thinned away (and from the remote too, with --clone,
        # after bringing it up to date), the space reclaimed: every mark restores as before.
        thin = ["prune", "--keep-within", "0s", "--hourly", "0s", "--daily", "0s"]
        if "--clone" in flags:
            subprocess.run(clawfs + ["push", "--wait"], check=True, stdout=subprocess.DEVNULL)
            thin += ["--remote", "origin"]
        subprocess.run(clawfs + thin, check=True, stdout=subprocess.DEVNULL)
        for seed, rel, links, marks, _ in checked:
            for name, want in marks:
                got, err = restored(clawfs, name, rel, links)
                wrong += compare(seed, "mark %s after pruning" % name, want, got, err)
        print("prune: %d marks checked" % sum(len(c[3]) for c in checked))
    if "--browse" in flags:
        # Every mark again, through the read-only view of the past.
        view = tempfile.mkdtemp(prefix="clawfs-random-view-")
        subprocess.run(clawfs + ["browse", view], check=True, stdout=subprocess.DEVNULL)
        try:
            for seed, rel, links, marks, _ in checked:
                for name, want in marks:
                    wrong += compare(seed, "mark %s in the view" % name, want,
                                     manifest(os.path.join(view, "marks", name, rel), links))
        finally:
            subprocess.run(clawfs + ["unmount", view], check=True, stdout=subprocess.DEVNULL)
            os.rmdir(view)
        print("browse: %d marks checked" % sum(len(c[3]) for c in checked))
    if "--clone" in flags:
        # Everything pushed to the remote the environment names, cloned onto a new machine
        # (its own directory and store): the checked-out tree is the tree now, and every mark
        # restores from the new machine's store as it did from this one's.
        remote = os.environ["CLAWFS_RANDOM_REMOTE"].split()
        subprocess.run(clawfs + ["push", "--wait"], check=True, stdout=subprocess.DEVNULL)
        machine = tempfile.mkdtemp(prefix="clawfs-random-clone-")
        there = [clawfs[0], "-C", os.path.join(machine, "dir"), "--store", os.path.join(machine, "store")]
        subprocess.run([clawfs[0], "clone", "--from"] + remote + there[3:] + [there[2]],
                       check=True, stdout=subprocess.DEVNULL)
        for seed, rel, links, marks, final in checked:
            wrong += compare(seed, "the clone's tree", final, manifest(os.path.join(machine, "dir", rel), links))
            for name, want in marks:
                got, err = restored(there, name, rel, links)
                wrong += compare(seed, "mark %s in the clone" % name, want, got, err)
        shutil.rmtree(machine)
        print("clone: %d marks checked" % sum(len(c[3]) for c in checked))
    r = subprocess.run(clawfs + ["verify"], capture_output=True, text=True)
    if r.returncode:
        wrong += 1
        print("verify failed: %s%s" % (r.stdout, r.stderr))
    sys.exit(1 if wrong else 0)


main()
