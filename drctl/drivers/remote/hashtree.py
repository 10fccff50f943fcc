"""Hash a directory tree where it lives and print its manifest: the program drctl sends over SSH to
``python3 -`` on each host (it runs there, on Python 3.6 or newer, with the standard library only).

Parameters: drctl puts ``PARAMS = {...}`` (a Python literal) in front of this text; run by hand,
the first argument is JSON. Keys: ``root`` (absolute path), ``include`` / ``exclude`` (globs,
see ``drctl.model.integrity``), ``algorithm`` (a hashlib name), ``workers`` (threads; default the
host's CPUs), ``cache`` (use and refresh the manifest cache), ``full`` (ignore the cache's
digests), ``cache_dir`` (default ``~/.cache/drctl/manifests``), ``racy_ns`` (see below).

Output on stdout, one record per line, in the byte order of the paths relative to ``root``
(directories are walked so that this order needs no sort of the whole tree):

    H <json>                  header: protocol, host, algorithm, workers, cache state
    F <digest> <size> <path>  a regular file
    E <path> <message>        a file (or, with a trailing /, a directory) that could not be read
    T <json>                  trailer: counts and timings; its absence means the output is cut
    X <json>                  a fatal error (nothing else follows); exit status 3

Fields are separated by tabs; in paths a backslash, newline and tab are written ``\\\\``, ``\\n``
and ``\\t`` (other bytes, UTF-8 or not, are written as they are). Symbolic links and special files
are not followed and not listed; the trailer counts them.

The manifest cache lives on the host, one file per (root, globs, algorithm) in the same order as
the output, keyed by size, mtime, ctime, inode and device: a file whose key is unchanged is not
read again. A file whose ctime is less than ``RACY_NS`` older than the moment it was read is not
cached (a change within the filesystem's timestamp granularity would go unseen). Memory stays
bounded: the walk holds one directory listing per level, the cache is merged as a stream, and at
most ``WINDOW`` results wait to be written.
"""

import hashlib
import os
import queue
import re
import stat
import sys
import threading
import time
from collections import deque
from fnmatch import translate

PROTOCOL = 1
CHUNK = 1 << 20
BATCH_BYTES = 8 << 20
BATCH_FILES = 256
WINDOW = 4096
RACY_NS = 2 * 10**9
CACHE_MAGIC = b"drctl-manifest-cache"
_local = threading.local()
_now_ns = getattr(time, "time_ns", lambda: int(time.time() * 1e9))


def esc(path):
    return path.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\t", b"\\t")


_UNESC = re.compile(rb"\\(.)")
_UNESC_MAP = {b"\\": b"\\", b"n": b"\n", b"t": b"\t"}


def unesc(text):
    return _UNESC.sub(lambda m: _UNESC_MAP[m.group(1)], text)


class Fatal(Exception):
    pass


def to_json(value):
    """JSON text of None / bool / int / float / str / list / dict (``json`` costs ~10 ms to import,
    a noticeable part of re-verifying an unchanged tree)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        out = []
        for ch in value:
            o = ord(ch)
            if ch in '"\\':
                out.append("\\" + ch)
            elif o < 0x20 or 0xD800 <= o <= 0xDFFF:
                out.append(f"\\u{o:04x}")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(to_json(str(k)) + ": " + to_json(v) for k, v in value.items()) + "}"
    return to_json(str(value))


class Workers:
    """A few threads hashing batches (``concurrent.futures`` would import ``logging``: ~10 ms)."""

    def __init__(self, n):
        self.jobs = queue.Queue()
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def _work(self):
        while True:
            batch = self.jobs.get()
            if batch is None:
                return
            try:
                batch.result = hash_batch(*batch.args)
            except BaseException as e:  # noqa: BLE001 (handed to the writer thread)
                batch.error = e
            batch.done.set()

    def submit(self, batch):
        self.jobs.put(batch)

    def close(self):
        for _ in self.threads:
            self.jobs.put(None)
        for t in self.threads:
            t.join()


# --- globs -----------------------------------------------------------------------------------------


class Glob:
    def __init__(self, pattern):
        self.dir_only = pattern.endswith("/")
        pattern = pattern.rstrip("/")
        anchored = pattern.startswith("/")
        pattern = pattern.lstrip("/")
        self.on_path = anchored or "/" in pattern
        raw = os.fsencode(pattern).decode("latin-1")
        self.rx = re.compile(translate(raw).encode("latin-1"))

    def matches(self, rel, name, is_dir):
        if self.dir_only and not is_dir:
            return False
        return self.rx.match(rel if self.on_path else name) is not None


class Selector:
    def __init__(self, include, exclude):
        self.include = [Glob(p) for p in include if not p.endswith("/")]
        self.exclude = [Glob(p) for p in exclude]

    def skip_dir(self, rel, name):
        return any(g.matches(rel, name, True) for g in self.exclude)

    def take_file(self, rel, name):
        if self.include and not any(g.matches(rel, name, False) for g in self.include):
            return False
        return not any(g.matches(rel, name, False) for g in self.exclude)


# --- walking ---------------------------------------------------------------------------------------


def listing(path):
    """Entries of a directory as (sort key, name, kind), sorted so that walking them depth-first
    yields relative paths in byte order: a directory sorts as ``name/``."""
    out = []
    with os.scandir(path) as it:
        for e in it:
            try:
                if e.is_dir(follow_symlinks=False):
                    kind = "d"
                elif e.is_file(follow_symlinks=False):
                    kind = "f"
                elif e.is_symlink():
                    kind = "l"
                else:
                    kind = "o"
            except OSError:
                kind = "o"
            out.append((e.name + b"/" if kind == "d" else e.name, e.name, kind))
    out.sort()
    return out


def walk(root, selector, counts):
    """Yield ('f', rel, path, lstat) for selected regular files and ('e', rel, message, None) for
    what cannot be read, in byte order of ``rel``."""
    stack = [(b"", root + b"/", iter(listing(root)))]
    while stack:
        prefix, base, it = stack[-1]
        item = next(it, None)
        if item is None:
            stack.pop()
            continue
        _key, name, kind = item
        rel = prefix + name
        if kind == "d":
            if selector.skip_dir(rel, name):
                continue
            try:
                entries = listing(base + name)
            except OSError as e:
                yield "e", rel + b"/", "cannot list directory: " + (e.strerror or str(e)), None
                continue
            stack.append((rel + b"/", base + name + b"/", iter(entries)))
        elif kind == "f":
            if not selector.take_file(rel, name):
                continue
            path = base + name
            try:
                st = os.lstat(path)
            except OSError as e:
                if not isinstance(e, FileNotFoundError):
                    yield "e", rel, "cannot stat: " + (e.strerror or str(e)), None
                continue
            if stat.S_ISREG(st.st_mode):
                yield "f", rel, path, st
        elif selector.take_file(rel, name):
            counts["symlinks" if kind == "l" else "special"] += 1


# --- hashing ---------------------------------------------------------------------------------------


def cache_key(st):
    """What must not have changed for a cached digest to stand, as the cache file writes it."""
    return b"%d\t%d\t%d\t%d\t%d" % (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


_noatime = [getattr(os, "O_NOATIME", 0)]


def _open(path):
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    if _noatime[0]:
        try:
            return os.open(path, flags | _noatime[0])
        except PermissionError:  # O_NOATIME needs the file's owner (or CAP_FOWNER)
            _noatime[0] = 0
    return os.open(path, flags)


def hash_one(rel, path, algorithm, racy_ns=RACY_NS):
    """-> ('F', rel, hex digest, size, cache key or None, False) or ('E', rel, message)."""
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        started = _now_ns()
        fd = _open(path)
    except OSError as e:
        return ("E", rel, "cannot open: " + (e.strerror or str(e)))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ("E", rel, "no longer a regular file")
        if hasattr(os, "posix_fadvise") and st.st_size > CHUNK:
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            except OSError:
                pass
        h = hashlib.new(algorithm)
        total = 0
        with open(fd, "rb", buffering=0, closefd=False) as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(view[:n])
                total += n
        after = os.fstat(fd)
    except OSError as e:
        return ("E", rel, "cannot read: " + (e.strerror or str(e)))
    finally:
        os.close(fd)
    key = cache_key(st)
    if cache_key(after) != key or total != st.st_size:
        return ("E", rel, "changed while being read")
    stable = max(st.st_mtime_ns, st.st_ctime_ns) < started - racy_ns
    return ("F", rel, h.hexdigest().encode("ascii"), st.st_size, key if stable else None, False)


def hash_batch(files, algorithm, racy_ns):
    return [hash_one(rel, path, algorithm, racy_ns) for rel, path in files]


# --- the cache -------------------------------------------------------------------------------------


def cache_path(params, root):
    base = params.get("cache_dir") or os.path.join(os.path.expanduser("~"), ".cache", "drctl", "manifests")
    ident = to_json([PROTOCOL, os.fsdecode(root), params.get("include") or [], params.get("exclude") or [],
                     params.get("algorithm", "sha256")])
    return os.path.join(base, hashlib.sha256(ident.encode()).hexdigest()[:32] + ".cache"), ident


class CacheReader:
    """The previous run's entries, read in step with the walk (both are in byte order).
    A line is ``escaped path <TAB> cache key <TAB> hex digest``."""

    def __init__(self, path, ident):
        self.f = None
        self.pending = None
        try:
            f = open(path, "rb")
        except OSError:
            return
        header = f.readline().rstrip(b"\n")
        if header != CACHE_MAGIC + b" " + ident.encode():
            f.close()
            return
        self.f = f

    def lookup(self, rel):
        """(cache key, digest) recorded for ``rel``, or None."""
        while self.f is not None:
            if self.pending is None:
                line = self.f.readline()
                try:
                    if not line.endswith(b"\n"):
                        raise ValueError
                    p, rest = line.split(b"\t", 1)
                    key, digest = rest[:-1].rsplit(b"\t", 1)
                except ValueError:
                    self.close()
                    return None
                self.pending = (unesc(p) if b"\\" in p else p, key, digest)
            p = self.pending[0]
            if p < rel:
                self.pending = None
                continue
            if p == rel:
                _, key, digest = self.pending
                self.pending = None
                return key, digest
            return None
        return None

    def close(self):
        if self.f is not None:
            self.f.close()
            self.f = None


class CacheWriter:
    """The new cache, written beside the old one and renamed over it once the walk completed."""

    def __init__(self, path, ident):
        self.path = path
        self.f = None
        self.error = None
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            self.tmp = f"{path}.tmp-{os.getpid()}"
            self.f = open(self.tmp, "wb")
            self.f.write(CACHE_MAGIC + b" " + ident.encode() + b"\n")
        except OSError as e:
            self.error = e.strerror or str(e)
            self.f = None

    def add(self, escaped, key, digest):
        if self.f is not None:
            self.f.write(escaped + b"\t" + key + b"\t" + digest + b"\n")

    def commit(self):
        if self.f is None:
            return False
        try:
            self.f.close()
            os.replace(self.tmp, self.path)
            return True
        except OSError as e:
            self.error = e.strerror or str(e)
            return False
        finally:
            self.f = None

    def discard(self):
        if self.f is not None:
            self.f.close()
            self.f = None
            try:
                os.unlink(self.tmp)
            except OSError:
                pass


# --- the run ---------------------------------------------------------------------------------------


class Batch:
    """Files to hash together on one worker (keeps per-file overhead low for small files)."""

    def __init__(self):
        self.files = []
        self.bytes = 0
        self.args = None
        self.done = threading.Event()
        self.result = None
        self.error = None

    def results(self):
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


def run(params, out):
    started = time.monotonic()
    root = os.fsencode(params["root"])
    algorithm = params.get("algorithm", "sha256")
    hashlib.new(algorithm)
    workers = int(params.get("workers") or min(os.cpu_count() or 1, 16))
    racy_ns = int(params.get("racy_ns", RACY_NS))
    try:
        st = os.stat(root)
    except OSError as e:
        raise Fatal("cannot access {}: {}".format(params["root"], e.strerror or e)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise Fatal("{} is not a directory".format(params["root"]))
    try:
        os.listdir(root)
    except OSError as e:
        raise Fatal("cannot list {}: {}".format(params["root"], e.strerror or e)) from None
    selector = Selector(params.get("include") or [], params.get("exclude") or [])
    use_cache = bool(params.get("cache", True))
    reader = writer = None
    cache_state = "off"
    if use_cache:
        path, ident = cache_path(params, root)
        if not params.get("full"):
            reader = CacheReader(path, ident)
        writer = CacheWriter(path, ident)
        cache_state = "used" if reader is not None and reader.f is not None else (
            "ignored (--full)" if params.get("full") else "empty")
        if writer.error:
            cache_state += "; not writable: " + writer.error
    header = {"protocol": PROTOCOL, "host": os.uname()[1], "root": params["root"], "algorithm": algorithm,
              "workers": workers, "cache": cache_state, "python": sys.version.split()[0]}
    out.write(b"H\t" + to_json(header).encode() + b"\n")
    counts = {"files": 0, "bytes": 0, "hashed": 0, "hashed_bytes": 0, "cached": 0, "errors": 0,
              "symlinks": 0, "special": 0, "racy": 0}
    pending = deque()
    open_batch = [None]

    def emit(item):
        if item[0] == "E":
            counts["errors"] += 1
            out.write(b"E\t" + esc(item[1]) + b"\t" + item[2].encode("utf-8", "replace") + b"\n")
            return
        _, rel, digest, size, key, cached = item
        counts["files"] += 1
        counts["bytes"] += size
        if cached:
            counts["cached"] += 1
        else:
            counts["hashed"] += 1
            counts["hashed_bytes"] += size
        escaped = esc(rel)
        out.write(b"F\t" + digest + b"\t" + str(size).encode() + b"\t" + escaped + b"\n")
        if writer is not None:
            if key is not None:
                writer.add(escaped, key, digest)
            elif not cached:
                counts["racy"] += 1

    def drain(block):
        while pending:
            head = pending[0]
            if isinstance(head, Batch):
                if head.args is None:
                    if not block:
                        return
                    submit()
                if not block and not head.done.is_set() and len(pending) < WINDOW:
                    return
                pending.popleft()
                for r in head.results():
                    emit(r)
            else:
                pending.popleft()
                emit(head)

    def submit():
        b = open_batch[0]
        if b is not None:
            b.args = (b.files, algorithm, racy_ns)
            pool.submit(b)
            open_batch[0] = None

    ok = False
    pool = Workers(workers)
    try:
        for kind, rel, path, st in walk(root, selector, counts):
            if kind == "e":
                submit()
                pending.append(("E", rel, path))
                continue
            hit = reader.lookup(rel) if reader is not None else None
            if hit is not None:
                key = cache_key(st)
                if hit[0] == key:
                    submit()
                    pending.append(("F", rel, hit[1], st.st_size, key, True))
                    drain(block=False)
                    continue
            b = open_batch[0]
            if b is None:
                b = open_batch[0] = Batch()
                pending.append(b)
            b.files.append((rel, path))
            b.bytes += st.st_size
            if b.bytes >= BATCH_BYTES or len(b.files) >= BATCH_FILES:
                submit()
            drain(block=False)
        submit()
        drain(block=True)
        ok = True
    finally:
        pool.close()
        if reader is not None:
            reader.close()
        if writer is not None:
            if ok:
                writer.commit()
            else:
                writer.discard()
    counts["elapsed_s"] = round(time.monotonic() - started, 6)
    try:
        import resource

        counts["peak_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        pass
    if writer is not None and writer.error:
        counts["cache_error"] = writer.error
    out.write(b"T\t" + to_json(counts).encode() + b"\n")


def main():
    params = globals().get("PARAMS")
    if params is None and len(sys.argv) > 1:
        import json

        params = json.loads(sys.argv[1])
    out = sys.stdout.buffer
    if not isinstance(params, dict):
        sys.stderr.write("usage: hashtree.py PARAMS_JSON\n")
        return 2
    try:
        run(params, out)
    except Fatal as e:
        out.write(b"X\t" + to_json({"error": str(e)}).encode() + b"\n")
        out.flush()
        return 3
    except (ValueError, KeyError, TypeError) as e:
        out.write(b"X\t" + to_json({"error": f"bad parameters: {e}"}).encode() + b"\n")
        out.flush()
        return 3
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
